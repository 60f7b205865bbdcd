//! The status page in a real browser: Debian's Chromium, headless, driven
//! over the DevTools protocol (the `headless_chrome` crate), against a real
//! daemon with real backends. The assertions read the rendered DOM; the
//! screenshots land in `target/status-page*.png` for people to look at.
//!
//! `.ci/run` installs Chromium (`apt-get install chromium`); `LB_CHROMIUM`
//! names another binary.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use lb_tests::harness::{bin, ctl_command, http_addr, http_get, BackendSpec, Daemon, WAIT};
use serde_json::Value;

/// The Chromium binary: `LB_CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    let path = std::env::var_os("LB_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium (`.ci/run` does) or set LB_CHROMIUM",
        path.display()
    );
    path
}

/// A headless Chromium as root in a container: no sandbox, no GPU, and no
/// background connections (this machine's network is closed).
fn browser(profile: &std::path::Path) -> Browser {
    let options = LaunchOptions::default_builder()
        .path(Some(chromium()))
        .headless(true)
        .sandbox(false)
        .window_size(Some((1500, 1000)))
        .user_data_dir(Some(profile.to_path_buf()))
        .idle_browser_timeout(Duration::from_secs(120))
        .args(
            [
                "--disable-gpu",
                "--disable-quic",
                "--disable-component-update",
                "--no-default-browser-check",
            ]
            .iter()
            .map(OsStr::new)
            .collect(),
        )
        .build()
        .expect("launch options");
    Browser::new(options).expect("start chromium")
}

/// The page's value of `expression` (JSON-encoded by the page itself).
fn eval(tab: &Tab, expression: &str) -> Value {
    let wrapped = format!("JSON.stringify({expression})");
    let text = tab
        .evaluate(&wrapped, false)
        .expect("evaluate")
        .value
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "null".into());
    serde_json::from_str(&text).expect("JSON from the page")
}

/// The value the promise `expression` resolves to (a number or a string).
fn eval_promise(tab: &Tab, expression: &str) -> Value {
    tab.evaluate(expression, true)
        .expect("evaluate")
        .value
        .unwrap_or(Value::Null)
}

/// Evaluates `expression` until `ok` holds of it or `within` passes; the
/// last value either way.
fn eval_until(tab: &Tab, expression: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = eval(tab, expression);
        if ok(&v) || Instant::now() >= deadline {
            return v;
        }
        // The DOM has no change notification reachable from here without a
        // script of our own in the page; a short poll bounded by the deadline.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each instance row of `service`: [id, state, share, weight override, text
/// of the share cell].
const ROWS: &str = "[...document.querySelectorAll('section[data-service=\"svc\"] tbody tr')]\
    .map(r => [r.dataset.instance, r.dataset.state, Number(r.dataset.share), \
    Number(r.dataset.override), r.querySelector('td.share').innerText.trim()])";

fn rows(v: &Value) -> Vec<(String, String, f64, u64, String)> {
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap_or_default().to_string(),
                        r[1].as_str().unwrap_or_default().to_string(),
                        r[2].as_f64().unwrap_or(f64::NAN),
                        r[3].as_u64().unwrap_or(0),
                        r[4].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The daemon's own view of each instance's share (`/api/services/svc`).
fn api_shares(d: &Daemon, token: Option<&str>) -> Vec<(String, f64)> {
    let (status, body) = http_get(d, "/api/services/svc", token).expect("GET");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let mut out: Vec<(String, f64)> = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap_or_default().to_string(),
                i["share"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn screenshot(tab: &Tab, name: &str) {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    let path = lb_tests::harness::repo_root().join("target").join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

fn ctl(d: &Daemon, args: &[&str]) -> String {
    let out = ctl_command(&d.addr(), &d.data_dir)
        .args(args)
        .output()
        .expect("ctl");
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_page_shows_every_instance_and_follows_the_daemon_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--http-listen", "127.0.0.1:0"],
    )
    .expect("daemon");
    // Weights as registered (load-aware weights would move with the load).
    ctl(
        &daemon,
        &["set-policy", "svc", "weighted_round_robin", "--create"],
    );
    let mut backends: Vec<_> = [("b1", 1, "eu-1a"), ("b2", 2, "eu-1b"), ("b3", 1, "eu-1a")]
        .into_iter()
        .map(|(id, w, zone)| {
            let mut b = BackendSpec::new("svc", id, w);
            b.extra = ["--zone", zone, "--label", "version=2.4", "--delay-ms", "2"]
                .map(String::from)
                .to_vec();
            b.start(&daemon.addr(), dir.path()).expect("backend")
        })
        .collect();
    let browser = browser(&dir.path().join("profile"));
    let tab = browser.new_tab().expect("tab");
    let url = format!("http://{}/", http_addr(&daemon).expect("HTTP address"));
    tab.navigate_to(&url).expect("navigate");

    // Every instance, with the share the daemon computed.
    let three = |v: &Value| rows(v).len() == 3;
    let shown = rows(&eval_until(&tab, ROWS, WAIT, three));
    assert_eq!(shown.len(), 3, "{shown:?}");
    let expected = api_shares(&daemon, None);
    for ((id, state, share, _, text), (api_id, api_share)) in shown.iter().zip(&expected) {
        assert_eq!((id, state.as_str()), (api_id, "healthy"));
        assert!(
            (share - api_share).abs() < 0.02,
            "{id}: {share} vs {api_share}"
        );
        assert_eq!(text, &format!("{:.1}%", share * 100.0), "{id}");
    }
    // b2 registered twice the weight of the others.
    assert!(shown[1].2 > shown[0].2 * 1.5, "{shown:?}");
    let facts = eval(
        &tab,
        "document.querySelector('section[data-service=\"svc\"] .facts').innerText",
    );
    assert!(
        facts.as_str().is_some_and(|f| f.contains("3 (3 healthy)")),
        "{facts}"
    );
    // A client calls (it would stop on its own after its calls).
    let mut caller = std::process::Command::new(bin("echo-client").expect("echo-client"))
        .args(["--daemon", &daemon.addr(), "--service", "svc"])
        .args([
            "--calls",
            "200000",
            "--concurrency",
            "8",
            "--min-servers",
            "3",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("echo-client");
    // The caller's outcomes and the backends' load show up as they come.
    let calls = "[...document.querySelectorAll('tbody td:nth-child(11)')].map(td => td.innerText)";
    let counted = eval_until(&tab, calls, WAIT, |v| {
        v.as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|c| c != "0"))
    });
    assert!(
        counted
            .as_array()
            .is_some_and(|a| a.iter().all(|c| c != "0")),
        "calls never showed: {counted}"
    );
    screenshot(&tab, "status-page.png");
    let _ = caller.kill();
    let _ = caller.wait();

    // A weight set with ctl is on the page within 2 s, without a reload.
    let marker = eval(&tab, "(window.__marker = 'same page', window.__marker)");
    ctl(&daemon, &["set-weight", "svc", "b1", "50"]);
    let set = Instant::now();
    let share = 50.0 / 53.0;
    let moved = |v: &Value| {
        rows(v)
            .first()
            .is_some_and(|r| r.3 == 50 && (r.2 - share).abs() < 0.01)
    };
    let after = eval_until(&tab, ROWS, Duration::from_secs(2), moved);
    assert!(
        moved(&after),
        "2 s after set-weight the page shows {:?}",
        rows(&after)
    );
    eprintln!("set-weight on the page after {:?}", set.elapsed());
    assert_eq!(eval(&tab, "window.__marker"), marker, "the page reloaded");

    // A backend killed leaves the page.
    backends[2].kill9();
    let gone = |v: &Value| rows(v).iter().map(|r| r.0.as_str()).eq(["b1", "b2"]);
    let left = rows(&eval_until(&tab, ROWS, WAIT, gone));
    assert_eq!(
        left.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["b1", "b2"]
    );

    // The daemon dies: the page says so.
    daemon.proc.kill9();
    let conn = "[document.getElementById('conn').dataset.state, document.getElementById('conn').innerText]";
    let down = eval_until(&tab, conn, WAIT, |v| v[0] == "down");
    assert_eq!(down[0], "down", "{down}");
    assert!(
        down[1].as_str().is_some_and(|t| t.contains("unreachable")),
        "{down}"
    );
    drop(backends);
}

#[test]
fn with_authentication_a_read_only_token_signs_in_and_a_hundred_instances_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--auth", "--http-listen", "127.0.0.1:0"],
    )
    .expect("daemon");
    let deadline = Instant::now() + WAIT;
    while !daemon.data_dir.join("admin.token").exists() {
        assert!(Instant::now() < deadline, "no admin token");
        std::thread::sleep(Duration::from_millis(20));
    }
    let created = ctl(
        &daemon,
        &[
            "token",
            "create",
            "--role",
            "admin-read-only",
            "--name",
            "viewer",
        ],
    );
    let viewer = created
        .split_whitespace()
        .find(|w| w.starts_with("lbt_"))
        .expect("a token in ctl's answer")
        .to_string();
    // 100 instances, in four zones.
    for i in 0..100 {
        let id = format!("i{i:03}");
        let addr = format!("127.0.0.1:{}", 20000 + i);
        let zone = format!("z{}", i % 4);
        let tier = format!("tier={}", ["web", "api"][i % 2]);
        let mut args = vec![
            "put-static",
            "svc",
            &id,
            &addr,
            "--zone",
            &zone,
            "--label",
            &tier,
        ];
        if i == 0 {
            args.push("--create");
        }
        ctl(&daemon, &args);
    }

    let browser = browser(&dir.path().join("profile"));
    let tab = browser.new_tab().expect("tab");
    let url = format!("http://{}/", http_addr(&daemon).expect("HTTP address"));
    tab.navigate_to(&url).expect("navigate");
    // Not signed in: the page asks for a token and shows nothing.
    let form =
        "[document.getElementById('login').hidden, document.querySelectorAll('tbody tr').length]";
    let v = eval_until(&tab, form, WAIT, |v| v[0] == false);
    assert_eq!(v, serde_json::json!([false, 0]), "{v}");
    // A wrong token is refused, with the reason.
    tab.wait_for_element("#token")
        .expect("token field")
        .click()
        .expect("click");
    tab.type_str("lbt_0000000000000000_wrong").expect("type");
    tab.press_key("Enter").expect("enter");
    let err = eval_until(
        &tab,
        "document.getElementById('login-error').innerText",
        WAIT,
        |v| v.as_str().is_some_and(|t| !t.is_empty()),
    );
    assert!(err.as_str().is_some_and(|t| !t.is_empty()), "{err}");
    // The read-only token signs in.
    tab.wait_for_element("#token")
        .expect("token field")
        .click()
        .expect("click");
    tab.type_str(&viewer).expect("type");
    tab.press_key("Enter").expect("enter");
    let count = "document.querySelectorAll('section[data-service=\"svc\"] tbody tr').length";
    let n = eval_until(&tab, count, WAIT, |v| v == 100);
    assert_eq!(n, 100);
    // The token itself never reaches the page's storage; a cookie holds
    // the session, out of the page's reach (HttpOnly).
    assert_eq!(eval(&tab, "document.cookie"), "");
    let status = "fetch('/api/services').then(r => r.status)";
    assert_eq!(eval_promise(&tab, status), 200);

    // Readable: rows stay one line high, the table fits the window, every
    // share shows, and the 100 shares add up to the whole.
    let layout = eval(
        &tab,
        "(() => { const rows = [...document.querySelectorAll('tbody tr')]; \
         const h = rows.map(r => r.getBoundingClientRect().height); \
         return [Math.max(...h), document.documentElement.scrollWidth, window.innerWidth, \
         rows.reduce((s, r) => s + Number(r.dataset.share), 0), \
         rows.filter(r => r.querySelector('td.share').innerText.trim() === '1.0%').length]; })()",
    );
    assert!(
        layout[0].as_f64().is_some_and(|h| h <= 26.0),
        "row height {layout}"
    );
    assert!(
        layout[1].as_f64() <= layout[2].as_f64(),
        "the table overflows the window: {layout}"
    );
    assert!(
        layout[3].as_f64().is_some_and(|s| (s - 1.0).abs() < 0.01),
        "{layout}"
    );
    assert_eq!(layout[4], 100, "{layout}");
    // The filter narrows the table to one zone.
    let filter = tab
        .wait_for_element("section[data-service=\"svc\"] .filter")
        .expect("filter");
    filter.click().expect("click");
    tab.type_str("z3").expect("type");
    let visible = "[...document.querySelectorAll('tbody tr')].filter(r => !r.hidden).length";
    assert_eq!(eval_until(&tab, visible, WAIT, |v| v == 25), 25);
    screenshot(&tab, "status-page-100.png");

    // Revoking the token ends the session: the page asks again.
    ctl(&daemon, &["token", "revoke", "viewer"]);
    let v = eval_until(&tab, "document.getElementById('login').hidden", WAIT, |v| {
        v == false
    });
    assert_eq!(
        v, false,
        "the page still shows the daemon after the token was revoked"
    );
    // And the API refuses the old session.
    assert_eq!(eval_promise(&tab, status), 401);
}
