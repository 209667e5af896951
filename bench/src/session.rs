//! One open psql session for polling: a query every few milliseconds through it costs the
//! machine being measured one statement, not a new process and a new backend each time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use switchyard_testkit::PgCluster;

const END: &str = "__switchyard_bench_end__";

pub struct Session {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Session {
    pub fn open(cluster: &PgCluster, database: &str) -> Session {
        let mut child = Command::new(cluster.bin("psql"))
            .args(["-X", "-q", "-At", "-h", &cluster.socket_dir().display().to_string(), "-p", &cluster.port().to_string()])
            .args(["-U", "postgres", "-d", database])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A query may fail while what it polls for does not exist yet: that reads as "".
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Session { child, input, output }
    }

    /// The query's output, lines joined by newlines ("" if it failed).
    pub fn query(&mut self, sql: &str) -> String {
        writeln!(self.input, "{sql};\n\\echo {END}").unwrap();
        self.input.flush().unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.output.read_line(&mut line).unwrap() > 0, "the polling psql session ended");
            let line = line.trim_end();
            if line == END {
                return lines.join("\n");
            }
            lines.push(line.to_string());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
