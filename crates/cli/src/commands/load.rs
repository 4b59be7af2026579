//! `teacher-load`: the teacher path alone under load.

use crate::cli::TeacherLoadArgs;
use anyhow::Context;
use reasonrec_core::{ChatMessage, Settings};
use reasonrec_teacher::TeacherPool;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PROMPT: &str = "## Recent history (oldest first)\n1. [Liked] «Heat (1995)» (Action, Crime)\n\
2. [Disliked] «Jumanji (1995)» (Adventure, Children's)\n\n## Target movie\n«Casino (1995)» (Crime, Drama)\n\n\
## Known outcome\nThe viewer will LIKE the target movie.\n\nAnswer in two short paragraphs.";

pub async fn teacher_load(settings: &Settings, a: TeacherLoadArgs) -> anyhow::Result<ExitCode> {
    let mut teacher = settings.teacher.clone();
    if let Some(name) = &a.endpoint {
        teacher.endpoints.retain(|e| &e.name == name);
    } else {
        teacher.endpoints.truncate(1);
    }
    let endpoint = teacher.endpoints.first().context("no such endpoint in the configuration")?.clone();
    teacher.endpoints[0].max_in_flight = teacher.endpoints[0].max_in_flight.max(a.concurrency);
    let pool = Arc::new(TeacherPool::new(&teacher)?);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(vec![ChatMessage { role: "user".into(), content: PROMPT.into() }]);
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    // Throughput is counted after a warm-up of a tenth of the run.
    let warm = Instant::now() + Duration::from_secs(a.seconds / 10);
    let counted = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency {
        let (pool, ok, failed, counted, messages) =
            (pool.clone(), ok.clone(), failed.clone(), counted.clone(), messages.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let r = pool.call(&messages).await;
                match r.result {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if Instant::now() >= warm {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let measured = a.seconds as f64 - (a.seconds / 10) as f64;
    let rate = counted.load(Ordering::Relaxed) as f64 / measured.max(1.0);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if a.json {
        println!(
            "{}",
            serde_json::json!({"endpoint": endpoint.name, "concurrency": a.concurrency, "seconds": a.seconds,
                                "ok": ok, "failed": failed, "answers_per_sec": rate})
        );
    } else {
        println!(
            "endpoint {}: {} in flight for {} s: {ok} answers, {failed} failed calls, {rate:.0} answers/s after warm-up",
            endpoint.name, a.concurrency, a.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
