//! The gauge chore: queue depths, and the tasks and spend of the runs served, for `/metrics`.

use super::pace::Pace;
use crate::error::CoordinatorError;
use reasonrec_core::metrics::metrics;
use reasonrec_core::stage::TaskState;
use reasonrec_queue::{Broker, Probe, Topology};
use reasonrec_store::Store;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The shortest time between two updates of the gauges.
const GAUGES_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Gauges {
    store: Store,
    topology: Topology,
    probe: Probe,
    /// Due every [`gauge_interval`] of the last update.
    pace: Pace,
}

impl Gauges {
    pub(crate) async fn open(store: Store, broker: &Broker) -> Result<Self, CoordinatorError> {
        Ok(Self { store, topology: broker.topology().clone(), probe: broker.probe().await?, pace: Pace::now() })
    }

    /// Updates the queue-depth and run gauges (at most every [`gauge_interval`]): messages
    /// waiting in each queue, tasks of `runs` by state, and their cost so far.
    pub(crate) async fn update(&self, runs: &[Uuid]) -> Result<(), CoordinatorError> {
        if !self.pace.due(GAUGES_EVERY) {
            return Ok(());
        }
        let started = Instant::now();
        let m = metrics();
        let t = &self.topology;
        let mut queues = vec![("tasks", t.work_queue.as_str()), ("dead", &t.dead_queue), ("parked", &t.parked_queue)];
        let tiers: Vec<(String, &str)> =
            t.retry_queues.iter().map(|(secs, name)| (format!("retry.{secs}s"), name.as_str())).collect();
        queues.extend(tiers.iter().map(|(label, name)| (label.as_str(), *name)));
        for (label, name) in queues {
            let depth = self.probe.depth(name).await?;
            m.queue_messages.get_or_create(&vec![("queue", label.to_string())]).set(i64::from(depth));
        }
        for run in runs {
            let (by_state, cost) = self.store.runs().gauges(*run).await?;
            for state in TaskState::ALL {
                let n = by_state.get(state.as_str()).copied().unwrap_or(0);
                m.run_tasks.get_or_create(&vec![("run_id", run.to_string()), ("state", state.to_string())]).set(n);
            }
            m.run_cost.get_or_create(&vec![("run_id", run.to_string())]).set(cost);
        }
        self.pace.not_before(Instant::now() + gauge_interval(started.elapsed()));
        Ok(())
    }
}

/// How long after an update of the gauges, which took `took`, the next one is due: every 10 s,
/// or rarer when counting is slow ([`crate::status::count_interval`]).
pub fn gauge_interval(took: Duration) -> Duration {
    crate::status::count_interval(took, GAUGES_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_take_at_most_a_twentieth_of_the_time() {
        assert_eq!(gauge_interval(Duration::from_millis(20)), Duration::from_secs(10));
        assert_eq!(gauge_interval(Duration::from_millis(500)), Duration::from_secs(10));
        assert_eq!(gauge_interval(Duration::from_millis(2_500)), Duration::from_secs(50));
    }
}
