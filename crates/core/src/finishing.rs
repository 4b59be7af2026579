//! The finishing state machine: what one finish event does to one task row. Pure: the store
//! (`reasonrec_store::finish`) locks the rows, asks [`decide`] for each event in arrival
//! order, and writes what it answers.
//!
//! The rules (ARCHITECTURE.md, "Invariants"):
//! - A task finishes only while its run is open (`running` or `paused`): a completed,
//!   cancelled or failed run (a snapshotted one included) never changes through a late copy.
//! - `done` is final; a second completion, or a failure after it, changes nothing.
//! - A failure moves only an unfinished task (`ready`, `published`, `batched`) to `failed`. A
//!   failure to render the prompt (`Unrenderable`: a judge whose reasoning has no answer yet) is
//!   a fact about the inputs it was rendered from: when they changed since, it is superseded like
//!   an answer and the worker renders again.
//! - A completion moves `ready`, `published`, `batched` or `failed` (a late copy after a failure) to
//!   `done`, unless it was worked from an older version of the task's inputs (an upstream output
//!   changed meanwhile): then it is superseded and the worker renders the prompt again.
//! - A task counts its dependents down exactly once: on its first finish (`released`).
//! - A completion of a task that had already released its dependents (it failed before, and was
//!   retried or completed by a late copy) re-plans those dependents: they ran, or will run,
//!   without this output, so they get it now (reason `upstream_changed`).
//! - `waiting` and `cancelled` tasks are not worked: their events change nothing.

use crate::stage::TaskState;

/// What arrived for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishEvent {
    /// An accepted (or reused) answer, rendered from `inputs_version` of the task's inputs.
    Complete { inputs_version: i32 },
    /// A permanent failure, spent retries or a dead-lettered message.
    Fail,
    /// The prompt could not be rendered from `inputs_version` of the task's inputs.
    Unrenderable { inputs_version: i32 },
}

/// What the machine reads of a locked task row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRow {
    pub state: TaskState,
    /// The task has counted its dependents down.
    pub released: bool,
    pub inputs_version: i32,
    /// Its run is `running` or `paused`.
    pub run_open: bool,
}

/// Why an event changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The task is done already (a duplicate copy, or a failure after success).
    AlreadyDone,
    /// The task failed already (a second failure).
    AlreadyFailed,
    /// The answer was rendered from inputs that changed since: render again.
    Superseded,
    /// The run is closed, or the task is waiting for its inputs or cancelled.
    NotOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The row moves to `to`. `release`: count the dependents down (first finish). `replan`:
    /// re-plan the dependents that already went ahead without this output.
    Move {
        to: TaskState,
        release: bool,
        replan: bool,
    },
    Keep(Kept),
}

/// Decides `event` for `row` and updates `row` to the state the decision leaves it in, so a
/// batch holding several events for one task decides each against the one before.
pub fn decide(row: &mut TaskRow, event: FinishEvent) -> Decision {
    use TaskState::*;
    if !row.run_open {
        return Decision::Keep(Kept::NotOpen);
    }
    let to = match (row.state, event) {
        (Done, _) => return Decision::Keep(Kept::AlreadyDone),
        (Waiting | Cancelled, _) => return Decision::Keep(Kept::NotOpen),
        (Failed, FinishEvent::Fail | FinishEvent::Unrenderable { .. }) => return Decision::Keep(Kept::AlreadyFailed),
        (_, FinishEvent::Complete { inputs_version } | FinishEvent::Unrenderable { inputs_version })
            if inputs_version != row.inputs_version =>
        {
            return Decision::Keep(Kept::Superseded);
        }
        (Ready | Published | Batched | Failed, FinishEvent::Complete { .. }) => Done,
        (Ready | Published | Batched, FinishEvent::Fail | FinishEvent::Unrenderable { .. }) => Failed,
    };
    let decision = Decision::Move { to, release: !row.released, replan: row.released && to == Done };
    row.state = to;
    row.released = true;
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use FinishEvent::*;
    use TaskState::*;

    fn row(state: TaskState, released: bool) -> TaskRow {
        TaskRow { state, released, inputs_version: 0, run_open: true }
    }

    const DONE: Decision = Decision::Move { to: Done, release: true, replan: false };
    const FAILED: Decision = Decision::Move { to: Failed, release: true, replan: false };
    const C: FinishEvent = Complete { inputs_version: 0 };

    /// Runs `events` in order on a fresh published task; returns the decisions and how often the
    /// dependents were released and re-planned.
    fn run(events: &[FinishEvent]) -> (Vec<Decision>, usize, usize) {
        let mut r = row(Published, false);
        let ds: Vec<Decision> = events.iter().map(|e| decide(&mut r, *e)).collect();
        let count = |f: fn(&Decision) -> bool| ds.iter().filter(|d| f(d)).count();
        let released = count(|d| matches!(d, Decision::Move { release: true, .. }));
        let replanned = count(|d| matches!(d, Decision::Move { replan: true, .. }));
        (ds, released, replanned)
    }

    #[test]
    fn every_order_of_fail_complete_and_copies_releases_the_dependents_exactly_once() {
        // Every sequence of up to four events (fail / complete): dependents released once, and
        // re-planned exactly when a success came after a failure.
        for n in 1..=4 {
            for bits in 0..(1u32 << n) {
                let events: Vec<FinishEvent> = (0..n).map(|i| if bits & (1 << i) != 0 { C } else { Fail }).collect();
                let (ds, released, replanned) = run(&events);
                assert_eq!(released, 1, "{events:?} -> {ds:?}");
                let first_success = events.iter().position(|e| *e == C);
                let expect_replan = usize::from(first_success.is_some_and(|i| i > 0));
                assert_eq!(replanned, expect_replan, "{events:?} -> {ds:?}");
            }
        }
    }

    #[test]
    fn a_completion_is_final() {
        assert_eq!(run(&[C, C]).0, vec![DONE, Decision::Keep(Kept::AlreadyDone)]);
        assert_eq!(run(&[C, Fail]).0, vec![DONE, Decision::Keep(Kept::AlreadyDone)]);
    }

    #[test]
    fn a_late_copy_after_a_failure_completes_and_replans() {
        let replan = Decision::Move { to: Done, release: false, replan: true };
        assert_eq!(run(&[Fail, C]).0, vec![FAILED, replan]);
        assert_eq!(run(&[Fail, Fail]).0, vec![FAILED, Decision::Keep(Kept::AlreadyFailed)]);
    }

    #[test]
    fn retry_failed_puts_a_released_task_back_and_its_success_replans() {
        // `run retry-failed` sets a failed task ready and keeps `released`.
        let mut r = row(Ready, true);
        assert_eq!(decide(&mut r, C), Decision::Move { to: Done, release: false, replan: true });
        let mut r = row(Published, true);
        assert_eq!(decide(&mut r, Fail), Decision::Move { to: Failed, release: false, replan: false });
    }

    #[test]
    fn a_closed_run_never_changes() {
        for state in TaskState::ALL {
            for event in [C, Fail] {
                let mut r = TaskRow { run_open: false, ..row(state, false) };
                assert_eq!(decide(&mut r, event), Decision::Keep(Kept::NotOpen));
                assert_eq!(r.state, state);
            }
        }
    }

    #[test]
    fn waiting_and_cancelled_tasks_are_not_worked() {
        for state in [Waiting, Cancelled] {
            for event in [C, Fail] {
                assert_eq!(decide(&mut row(state, false), event), Decision::Keep(Kept::NotOpen));
            }
        }
    }

    #[test]
    fn an_answer_from_older_inputs_is_superseded_a_failure_is_not() {
        let mut r = TaskRow { inputs_version: 2, ..row(Published, false) };
        assert_eq!(decide(&mut r, Complete { inputs_version: 1 }), Decision::Keep(Kept::Superseded));
        assert_eq!(r.state, Published);
        assert_eq!(decide(&mut r, Complete { inputs_version: 2 }), DONE);
        let mut r = TaskRow { inputs_version: 2, ..row(Published, false) };
        assert_eq!(decide(&mut r, Fail), FAILED);
    }

    #[test]
    fn a_render_failure_from_older_inputs_is_superseded_and_from_current_ones_fails() {
        // A judge rendered before its reasoning's answer existed; the answer arrived meanwhile
        // (the dependent's inputs version was bumped): render again, do not fail.
        let mut r = TaskRow { inputs_version: 1, ..row(Published, true) };
        assert_eq!(decide(&mut r, Unrenderable { inputs_version: 0 }), Decision::Keep(Kept::Superseded));
        assert_eq!(r.state, Published);
        let failed = Decision::Move { to: Failed, release: false, replan: false };
        assert_eq!(decide(&mut r, Unrenderable { inputs_version: 1 }), failed);
        assert_eq!(decide(&mut r, Unrenderable { inputs_version: 1 }), Decision::Keep(Kept::AlreadyFailed));
        assert_eq!(
            decide(&mut r, Complete { inputs_version: 1 }),
            Decision::Move { to: Done, release: false, replan: true }
        );
        let mut r = row(Ready, false);
        assert_eq!(decide(&mut r, Unrenderable { inputs_version: 0 }), FAILED);
        let mut r = row(Waiting, false);
        assert_eq!(decide(&mut r, Unrenderable { inputs_version: 0 }), Decision::Keep(Kept::NotOpen));
    }
}
