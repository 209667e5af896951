use std::fmt;
use std::str::FromStr;

/// A PostgreSQL WAL position (log sequence number).
///
/// Ordering is the WAL's byte order, which is also commit order for the commit records a logical
/// slot decodes: a transaction committed later has a larger commit LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| format!("not an LSN: {s:?}"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("not an LSN: {s:?}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("not an LSN: {s:?}"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

/// Where a change stream stands: one variant per kind of log. Positions are ordered only within
/// one log; comparing positions of different logs is a bug, and `partial_cmp` says so by
/// returning `None`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    /// PostgreSQL: the end of a transaction's commit record (what a slot confirms).
    Postgres(Lsn),
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Position::Postgres(a), Position::Postgres(b)) => Some(a.cmp(b)),
        }
    }
}

impl Position {
    /// The text form stored in a checkpoint: `pg:16/B374D848`.
    pub fn encode(&self) -> String {
        match self {
            Position::Postgres(lsn) => format!("pg:{lsn}"),
        }
    }

    pub fn decode(text: &str) -> Result<Position, String> {
        match text.split_once(':') {
            Some(("pg", lsn)) => Ok(Position::Postgres(lsn.parse()?)),
            _ => Err(format!("unknown position {text:?}")),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Postgres(lsn) => write!(f, "{lsn}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_and_orders() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!(Lsn(1) < "1/0".parse().unwrap());
        assert!("x/1".parse::<Lsn>().is_err());
        let pos = Position::Postgres(lsn);
        assert_eq!(Position::decode(&pos.encode()).unwrap(), pos);
    }
}
