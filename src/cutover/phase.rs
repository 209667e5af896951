//! The cutover's decisions, as a pure function: where it stands plus what just happened gives
//! what to do next. No I/O here; the controller acts and reports back.
//!
//! ```text
//!  idle ─request─► gates ─► fence ─► mark ─► drain ─► final_check ─► sequences ─► arm ─► switch ─► resume ─► idle
//!                    │        │        │        │          │ (rehearsal: roll back here)│    (point of no return)
//!                    └────────┴────────┴────────┴──────────┴───────────┴─────────┴──► rolling_back ─► idle
//! ```
//!
//! Before `switch` is recorded, any failure, abort or restart rolls back: the old side is
//! unfenced and keeps the writes. From `switch` on, the only way is forward: a failure or a
//! restart repeats the step (each step is idempotent), because the application may already be
//! writing to the new side. So at no time can the application write to both.

use std::fmt;
use std::str::FromStr;

/// Which way the application's writes move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Old database -> shadow.
    Cutover,
    /// Shadow -> old database.
    Switchback,
    /// A cutover's steps up to the final check, then rolled back: measures the write pause.
    Rehearsal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Idle,
    /// Go/no-go checks: lag, verification, the way back.
    Gates,
    /// Fence the writers of the live side.
    Fence,
    /// Write the fence mark into the live side's change stream.
    Mark,
    /// Wait until the other side has applied the mark.
    Drain,
    /// Chunks touched since the last verification, and row counts.
    FinalCheck,
    /// Move the other side's sequences past the live side's.
    Sequences,
    /// Create the way back: a slot on the new live side, starting here.
    Arm,
    /// Point the application at the new side. From here on there is no rolling back.
    Switch,
    /// Keep the old side fenced, stop the pipeline into the new side, start the way back.
    Resume,
    /// Undo what was done: drop the armed slot, unfence, resume traffic on the old side.
    RollingBack,
}

/// What happened since the last decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// An operator (or a trigger) asked for an operation.
    Requested(Operation),
    /// The current phase's work is done.
    Done,
    /// The current phase's work failed (a gate said no, a drain timed out, an error).
    Failed(String),
    /// An operator asked to abort.
    AbortRequested,
    /// The process restarted and found this phase recorded.
    Restarted,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Record this phase, then do its work.
    Enter(Phase),
    /// Record `RollingBack` with the reason, then undo.
    RollBack(String),
    /// Record `Idle` and the outcome; `completed` says whether the live side changed.
    Finish { completed: bool, outcome: String },
    /// Do the current phase's work again (after a failure past the point of no return).
    Retry(String),
    /// Refuse the request or abort, with the reason; nothing changes.
    Refuse(String),
}

/// The state the decision is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub phase: Phase,
    pub operation: Option<Operation>,
    /// The application writes to the shadow (after a completed cutover).
    pub shadow_live: bool,
}

pub fn decide(state: State, observation: Observation) -> Decision {
    use Observation::*;
    use Phase::*;
    let operation = state.operation.unwrap_or(Operation::Cutover);
    match (state.phase, observation) {
        (Idle, Requested(requested)) => match (requested, state.shadow_live) {
            (Operation::Switchback, false) => Decision::Refuse("the old database is live already; there is nothing to switch back".into()),
            (Operation::Cutover | Operation::Rehearsal, true) => {
                Decision::Refuse("the shadow is live already (a cutover completed); switch back first".into())
            }
            _ => Decision::Enter(Gates),
        },
        (Idle, AbortRequested) => Decision::Refuse("no cutover or switch-back is in progress".into()),
        (Idle, Done | Failed(_) | Restarted) => Decision::Refuse("nothing in progress".into()),
        (_, Requested(_)) => Decision::Refuse(format!("a {} is in progress (at {})", operation, state.phase)),

        (RollingBack, Done) => Decision::Finish { completed: false, outcome: "rolled back".into() },
        // Undoing is idempotent: on trouble, undo again.
        (RollingBack, Failed(reason)) => Decision::Retry(reason),
        (RollingBack, Restarted) => Decision::Enter(RollingBack),
        (RollingBack, AbortRequested) => Decision::Refuse("already rolling back".into()),

        (Switch | Resume, AbortRequested) => Decision::Refuse(format!(
            "the application has been switched (at {}); it cannot be aborted now: let it finish, then switch back",
            state.phase
        )),
        (Switch | Resume, Failed(reason)) => Decision::Retry(reason),
        (Switch | Resume, Restarted) => Decision::Enter(state.phase),
        (Switch, Done) => Decision::Enter(Resume),
        (Resume, Done) => Decision::Finish { completed: true, outcome: "completed".into() },

        (_, AbortRequested) => Decision::RollBack("aborted by the operator".into()),
        (phase, Failed(reason)) => Decision::RollBack(format!("{phase} failed: {reason}")),
        (phase, Restarted) => Decision::RollBack(format!("Switchyard restarted during {phase}")),
        (FinalCheck, Done) if operation == Operation::Rehearsal => Decision::RollBack("rehearsal complete".into()),
        (phase, Done) => Decision::Enter(next(phase)),
    }
}

fn next(phase: Phase) -> Phase {
    use Phase::*;
    match phase {
        Idle => Gates,
        Gates => Fence,
        Fence => Mark,
        Mark => Drain,
        Drain => FinalCheck,
        FinalCheck => Sequences,
        Sequences => Arm,
        Arm => Switch,
        Switch => Resume,
        Resume | RollingBack => Idle,
    }
}

/// Whether the phase's side effects may include a fence that must be undone on rollback.
pub fn may_be_fenced(phase: Phase) -> bool {
    phase >= Phase::Fence
}

const PHASES: [(Phase, &str); 11] = [
    (Phase::Idle, "idle"),
    (Phase::Gates, "gates"),
    (Phase::Fence, "fence"),
    (Phase::Mark, "mark"),
    (Phase::Drain, "drain"),
    (Phase::FinalCheck, "final_check"),
    (Phase::Sequences, "sequences"),
    (Phase::Arm, "arm"),
    (Phase::Switch, "switch"),
    (Phase::Resume, "resume"),
    (Phase::RollingBack, "rolling_back"),
];

impl Phase {
    pub fn all() -> impl Iterator<Item = Phase> {
        PHASES.iter().map(|(p, _)| *p)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PHASES.iter().find(|(p, _)| p == self).map(|(_, n)| *n).unwrap_or("?"))
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PHASES.iter().find(|(_, n)| *n == s).map(|(p, _)| *p).ok_or_else(|| format!("unknown cutover phase {s:?}"))
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Cutover => "cutover",
            Operation::Switchback => "switchback",
            Operation::Rehearsal => "rehearsal",
        })
    }
}

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cutover" => Ok(Operation::Cutover),
            "switchback" => Ok(Operation::Switchback),
            "rehearsal" => Ok(Operation::Rehearsal),
            _ => Err(format!("unknown operation {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::*;
    use Phase::*;

    fn state(phase: Phase, operation: Operation) -> State {
        State { phase, operation: Some(operation), shadow_live: operation == Operation::Switchback }
    }

    const STEPS: [Phase; 9] = [Gates, Fence, Mark, Drain, FinalCheck, Sequences, Arm, Switch, Resume];

    #[test]
    fn a_request_walks_every_step_in_order_then_finishes() {
        for operation in [Operation::Cutover, Operation::Switchback] {
            let idle = State { phase: Idle, operation: None, shadow_live: operation == Operation::Switchback };
            assert_eq!(decide(idle, Requested(operation)), Decision::Enter(Gates));
            for pair in STEPS.windows(2) {
                assert_eq!(decide(state(pair[0], operation), Done), Decision::Enter(pair[1]), "{operation} after {}", pair[0]);
            }
            assert_eq!(decide(state(Resume, operation), Done), Decision::Finish { completed: true, outcome: "completed".into() });
        }
    }

    #[test]
    fn a_rehearsal_rolls_back_after_the_final_check() {
        let rehearsal = |phase| state(phase, Operation::Rehearsal);
        for pair in STEPS[..5].windows(2) {
            assert_eq!(decide(rehearsal(pair[0]), Done), Decision::Enter(pair[1]));
        }
        assert_eq!(decide(rehearsal(FinalCheck), Done), Decision::RollBack("rehearsal complete".into()));
        assert_eq!(decide(rehearsal(RollingBack), Done), Decision::Finish { completed: false, outcome: "rolled back".into() });
    }

    #[test]
    fn before_the_switch_any_failure_abort_or_restart_rolls_back() {
        for phase in [Gates, Fence, Mark, Drain, FinalCheck, Sequences, Arm] {
            for operation in [Operation::Cutover, Operation::Switchback, Operation::Rehearsal] {
                for observation in [Failed("x".into()), AbortRequested, Restarted] {
                    let decision = decide(state(phase, operation), observation.clone());
                    assert!(matches!(decision, Decision::RollBack(_)), "{phase} {operation} {observation:?} -> {decision:?}");
                }
            }
        }
    }

    #[test]
    fn from_the_switch_on_there_is_only_forward() {
        for phase in [Switch, Resume] {
            assert!(matches!(decide(state(phase, Operation::Cutover), AbortRequested), Decision::Refuse(_)));
            assert_eq!(decide(state(phase, Operation::Cutover), Failed("x".into())), Decision::Retry("x".into()));
            assert_eq!(decide(state(phase, Operation::Cutover), Restarted), Decision::Enter(phase));
        }
    }

    #[test]
    fn rolling_back_is_repeated_until_done() {
        let rolling = state(RollingBack, Operation::Cutover);
        assert_eq!(decide(rolling, Failed("x".into())), Decision::Retry("x".into()));
        assert_eq!(decide(rolling, Restarted), Decision::Enter(RollingBack));
        assert!(matches!(decide(rolling, AbortRequested), Decision::Refuse(_)));
    }

    #[test]
    fn requests_that_do_not_fit_are_refused() {
        let old_live = State { phase: Idle, operation: None, shadow_live: false };
        let shadow_live = State { phase: Idle, operation: None, shadow_live: true };
        assert!(matches!(decide(old_live, Requested(Operation::Switchback)), Decision::Refuse(_)));
        assert!(matches!(decide(shadow_live, Requested(Operation::Cutover)), Decision::Refuse(_)));
        assert!(matches!(decide(shadow_live, Requested(Operation::Rehearsal)), Decision::Refuse(_)));
        assert!(matches!(decide(old_live, AbortRequested), Decision::Refuse(_)));
        assert!(matches!(decide(old_live, Restarted), Decision::Refuse(_)));
        for phase in STEPS {
            assert!(matches!(decide(state(phase, Operation::Cutover), Requested(Operation::Cutover)), Decision::Refuse(_)));
        }
    }

    #[test]
    fn every_phase_has_a_decision_for_every_observation_and_a_name_that_round_trips() {
        for phase in Phase::all() {
            assert_eq!(phase.to_string().parse::<Phase>(), Ok(phase));
            for observation in [Requested(Operation::Cutover), Done, Failed("x".into()), AbortRequested, Restarted] {
                let _ = decide(state(phase, Operation::Cutover), observation);
            }
        }
    }
}
