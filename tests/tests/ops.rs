//! Operating it: the coordinator's status page and API (in a real headless browser), the ops
//! endpoints, metrics after a real run, and coordinator leadership by advisory lock.

use reasonrec_coordinator::leader::acquire;
use reasonrec_coordinator::web::Access;

use reasonrec_tests::TestEnv;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Debian's chromium, headless, on `url` with a throwaway profile.
fn headless(browser: &str, profile: &std::path::Path, extra: &str, url: &str) -> std::io::Result<std::process::Output> {
    std::process::Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900", "--virtual-time-budget=4000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(extra)
        .arg(url)
        .output()
}

const FORM: &str = "application/x-www-form-urlencoded";

fn ready_ok() -> reasonrec_ops::ReadyCheck {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_runs_in_a_real_browser_and_needs_its_token() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let plan = env.plan_sample_run(40).await?;
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;

    let stop = CancellationToken::new();
    let token = "s3cret-0123456789-token";
    let app = reasonrec_coordinator::web::router(
        env.store.clone(),
        Access::Token(token.into()),
        ready_ok(),
        Arc::new(AtomicBool::new(true)),
    );
    let addr = reasonrec_ops::serve("127.0.0.1:0", app, stop.clone()).await?;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    assert_eq!(http.get(format!("{base}/api/runs")).send().await?.status(), 401);
    assert_eq!(
        http.get(format!("{base}/api/runs?token={token}")).send().await?.status(),
        401,
        "a token in the query string (it lands in proxy logs) is not accepted"
    );
    assert_eq!(http.get(format!("{base}/api/runs")).bearer_auth("wrong").send().await?.status(), 401);
    // The login form: the token in the body, an HttpOnly cookie back (a digest, not the token).
    let wrong = http.post(format!("{base}/login")).header("content-type", FORM).body("token=wrong").send().await?;
    assert_eq!(wrong.status(), 401);
    let login =
        http.post(format!("{base}/login")).header("content-type", FORM).body(format!("token={token}")).send().await?;
    assert_eq!(login.status(), 303);
    let cookie = login.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains(token), "{cookie}");
    let pair = cookie.split(';').next().unwrap_or_default().to_string();
    let by_cookie = http.get(format!("{base}/api/runs")).header("cookie", &pair).send().await?;
    assert_eq!(by_cookie.status(), 200);
    let forged = pair.replace('=', "=0");
    assert_eq!(http.get(format!("{base}/api/runs")).header("cookie", forged).send().await?.status(), 401);
    let api: serde_json::Value =
        http.get(format!("{base}/api/runs")).bearer_auth(token).send().await?.error_for_status()?.json().await?;
    assert_eq!(api["leading"], true);
    assert_eq!(api["runs"][0]["run_id"], plan.run_id.to_string());
    assert_eq!(api["runs"][0]["status"]["done"], 40);
    assert_eq!(api["runs"][0]["status"]["state"], "completed");
    let per_minute = api["runs"][0]["per_minute"].as_array().cloned().unwrap_or_default();
    let charted: i64 = per_minute.iter().map(|p| p[1].as_i64().unwrap_or(0)).sum();
    assert_eq!(charted, 40, "the chart's data counts every completion");
    assert_eq!(http.get(format!("{base}/healthz")).send().await?.status(), 200);
    assert_eq!(http.get(format!("{base}/readyz")).send().await?.status(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await?.text().await?;
    assert!(metrics.contains("reasonrec_tasks_total{stage=\"reasoning\",outcome=\"completed\"}"), "{metrics}");
    assert!(metrics.contains("reasonrec_teacher_request_duration_seconds_bucket"), "{metrics}");
    // The run gauges (set by the outbox as it drove the run) count every task of the run once.
    let run_label = format!("run_id=\"{}\"", plan.run_id);
    let gauged: i64 = metrics
        .lines()
        .filter(|l| l.starts_with("reasonrec_run_tasks{") && l.contains(&run_label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE run_id = $1")
        .bind(plan.run_id)
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(gauged, total, "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("reasonrec_run_cost") && l.contains(&run_label)), "{metrics}");

    // The page as a browser renders it after its login form was sent (a local page submits the
    // form as a person would): the script fetched the API with the cookie and drew the run.
    let browser = std::env::var("REASONREC_BROWSER").unwrap_or_else(|_| "chromium".into());
    let dir = tempfile::tempdir()?;
    let shot = dir.path().join("status.png");
    let login_page = dir.path().join("login.html");
    std::fs::write(
        &login_page,
        format!(
            "<form id=f method=post action=\"{base}/login\"><input name=token value=\"{token}\"></form>\
             <script>document.getElementById('f').submit()</script>"
        ),
    )?;
    let url = format!("file://{}", login_page.display());
    let run_browser = |profile: &str, extra: String| {
        let (browser, url, profile) = (browser.clone(), url.clone(), dir.path().join(profile));
        tokio::task::spawn_blocking(move || headless(&browser, &profile, &extra, &url))
    };
    let dom = run_browser("p1", "--dump-dom".into()).await??;
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(dom_text.contains(&format!("data-run=\"{}\"", plan.run_id)), "run not rendered:\n{dom_text}");
    assert!(dom_text.contains("<svg") && dom_text.contains("tasks finished per minute"), "chart not drawn");
    assert!(dom_text.contains("This coordinator leads."));
    let out = run_browser("p2", format!("--screenshot={}", shot.display())).await??;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot)?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    // A rendered page with tables, bars and a chart is far from a blank 1280x900 image.
    assert!(png.len() > 20_000, "screenshot only {} bytes: page looks blank", png.len());
    if let Ok(keep) = std::env::var("REASONREC_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep)?;
    }
    stop.cancel();
    broker.close().await;
    env.cleanup().await
}

/// Without a login the page shows its form and no run; bound to loopback, a request whose
/// `Host` names another machine (a DNS-rebinding page) reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_asks_for_its_token_and_a_loopback_one_answers_only_to_a_loopback_host() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let stop = CancellationToken::new();
    let serve = |access: Access| {
        let app =
            reasonrec_coordinator::web::router(env.store.clone(), access, ready_ok(), Arc::new(AtomicBool::new(true)));
        reasonrec_ops::serve("127.0.0.1:0", app, stop.clone())
    };
    let http = reqwest::Client::new();

    let locked = format!("http://{}", serve(Access::Token("0123456789abcdef-token".into())).await?);
    let browser = std::env::var("REASONREC_BROWSER").unwrap_or_else(|_| "chromium".into());
    let dir = tempfile::tempdir()?;
    let (profile, url) = (dir.path().join("p"), format!("{locked}/"));
    let dom = tokio::task::spawn_blocking(move || headless(&browser, &profile, "--dump-dom", &url)).await??;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("<form id=\"login\" method=\"post\" action=\"login\">"), "login form shown:\n{dom}");
    assert!(dom.contains("<div id=\"runs\"></div>"), "no run without the token:\n{dom}");

    let open = serve(Access::Loopback).await?;
    let local = http.get(format!("http://{open}/api/runs")).send().await?;
    assert_eq!(local.status(), 200, "reqwest names 127.0.0.1 as Host");
    for host in ["evil.example", "evil.example:80", "127.0.0.1.evil.example"] {
        let page = http.get(format!("http://{open}/")).header("host", host).send().await?;
        let api = http.get(format!("http://{open}/api/runs")).header("host", host).send().await?;
        assert_eq!((page.status().as_u16(), api.status().as_u16()), (421, 421), "Host {host}");
    }
    let localhost =
        http.get(format!("http://{open}/api/runs")).header("host", format!("localhost:{}", open.port())).send().await?;
    assert_eq!(localhost.status(), 200);
    stop.cancel();
    env.cleanup().await
}

/// Clients that connect and send nothing hold a slot only until the idle timeout; at the
/// connection limit a real request waits for a slot instead of failing, and is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_cut_off_and_the_connection_limit_holds() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let stop = CancellationToken::new();
    let limits = reasonrec_ops::Limits {
        max_connections: 3,
        idle: Duration::from_millis(300),
        max_age: Duration::from_secs(60),
    };
    let addr =
        reasonrec_ops::serve_with("127.0.0.1:0", reasonrec_ops::router(ready_ok()), stop.clone(), limits).await?;
    // Three silent clients take every slot (one sends half a request line and stops).
    let mut silent = Vec::new();
    for i in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        if i == 0 {
            tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /healthz HT").await?;
        }
        silent.push(s);
    }
    // A real request queues behind them and is answered once the idle timeout frees a slot.
    let answered =
        reqwest::Client::new().get(format!("http://{addr}/healthz")).timeout(Duration::from_secs(20)).send().await?;
    assert_eq!(answered.status(), 200);
    for mut s in silent {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await?.unwrap_or(0);
        assert_eq!(n, 0, "a silent client's connection was closed by the server");
    }
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_coordinator_leads_and_a_standby_takes_over_when_it_goes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let key = 0x7465_7374;
    let never = CancellationToken::new();
    let first = acquire(&env.store, key, Duration::from_millis(100), &never).await?;
    let Some(first) = first else { anyhow::bail!("the first coordinator must lead") };

    // A second one stands by while the first holds the lock.
    let give_up = CancellationToken::new();
    let stop_soon = give_up.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop_soon.cancel();
    });
    assert!(acquire(&env.store, key, Duration::from_millis(100), &give_up).await?.is_none(), "a standby does not lead");

    // The leader steps down (its connection closes): the standby takes over.
    let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
    let hold = tokio::spawn(first.hold(Duration::from_millis(100), lost.clone(), stop.clone()));
    let standby = tokio::spawn({
        let store = env.store.clone();
        async move { acquire(&store, key, Duration::from_millis(100), &CancellationToken::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!standby.is_finished(), "no takeover while the leader holds");
    stop.cancel();
    hold.await?;
    assert!(lost.is_cancelled());
    let second = tokio::time::timeout(Duration::from_secs(5), standby).await???;
    assert!(second.is_some(), "the standby leads after the leader left");
    drop(second);
    env.cleanup().await
}
