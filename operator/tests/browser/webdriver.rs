//! The WebDriver commands the browser tests use, and the chromedriver
//! process behind them (killed on drop, with the session).

use super::http;
use base64::Engine;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// An error answered by chromedriver (`error` is the W3C error code, e.g.
/// `no such element`, `no such alert`), or a transport failure.
#[derive(Debug, Clone)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

impl std::error::Error for WebDriverError {}

type Result<T> = std::result::Result<T, WebDriverError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

#[derive(Debug)]
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Screenshots and chromedriver's log for this test.
    pub artifacts: PathBuf,
}

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib/chromium")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `target/browser-artifacts/<test>`: kept after the run (CI uploads target/).
pub fn artifacts_dir(test: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap_or(Path::new("target"));
    let dir = target.join("browser-artifacts").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. `test` names
    /// the artifacts directory.
    pub async fn start(test: &str) -> Option<Browser> {
        let chromium = find_binary("HARMONY_CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
        let driver = find_binary("HARMONY_CHROMEDRIVER", &["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let why =
                "chromium or chromedriver not found (scripts/setup installs Debian's chromium and chromium-driver)";
            if std::env::var_os("HARMONY_REQUIRE_BROWSER").is_some() {
                panic!("{why}; HARMONY_REQUIRE_BROWSER is set");
            }
            eprintln!("SKIPPED browser test {test}: {why}");
            return None;
        };
        let artifacts = artifacts_dir(test);
        let port = free_port();
        // Its own process group: Chromium and its helpers are killed with
        // chromedriver even when a test dies before ending the session.
        let child = Command::new(&driver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", artifacts.join("chromedriver.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let mut browser = Browser { driver: child, port, session: String::new(), artifacts };
        browser.wait_ready().await;
        let profile = browser.artifacts.join("profile");
        let _ = std::fs::remove_dir_all(&profile);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // An open alert or confirm stays open until a test handles it
            // (the default would dismiss it at the next command, unseen).
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let value = browser.call("POST", "/session", Some(caps)).await.unwrap();
        browser.session = value["sessionId"].as_str().expect("a session id").to_string();
        Some(browser)
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http::request(self.port, "GET", "/status", None).await {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                if v["value"]["ready"] == json!(true) {
                    return;
                }
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited: {status}; see {}", self.artifacts.join("chromedriver.log").display());
            }
            assert!(Instant::now() < deadline, "chromedriver not ready within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let r = http::request(self.port, method, path, bytes.as_deref())
            .await
            .map_err(|e| WebDriverError { error: "transport".into(), message: e.to_string() })?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| WebDriverError {
            error: "bad response".into(),
            message: format!("{e}: {}", String::from_utf8_lossy(&r.body)),
        })?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if r.status >= 400 {
            return Err(WebDriverError {
                error: value["error"].as_str().unwrap_or("unknown error").to_string(),
                message: value["message"].as_str().unwrap_or_default().lines().next().unwrap_or_default().to_string(),
            });
        }
        Ok(value)
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body).await
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await.unwrap();
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", None).await.unwrap().as_str().unwrap_or_default().to_string()
    }

    pub async fn find(&self, css: &str) -> Result<Element> {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await?;
        match v[ELEMENT_KEY].as_str() {
            Some(id) => Ok(Element(id.to_string())),
            None => {
                Err(WebDriverError { error: "bad response".into(), message: format!("no element reference in {v}") })
            }
        }
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self.cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css}))).await.unwrap();
        v.as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT_KEY].as_str()).map(|s| Element(s.to_string())).collect())
            .unwrap_or_default()
    }

    /// Polls until `css` matches (the page is updated by htmx and SSE).
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css).await {
                Ok(e) => return e,
                Err(e) if Instant::now() > deadline => {
                    self.screenshot("timeout").await;
                    panic!("{css} did not appear within {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Polls a JavaScript expression until it is truthy; returns its value.
    pub async fn wait_until(&self, what: &str, js_expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let script = format!("return ({js_expr});");
        loop {
            let v = self.execute(&script, json!([])).await.unwrap_or(Value::Null);
            let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!("{what}: not within {timeout:?} ({js_expr})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn text(&self, e: &Element) -> String {
        self.cmd("GET", &format!("/element/{}/text", e.0), None).await.unwrap().as_str().unwrap_or_default().to_string()
    }

    pub async fn attr(&self, e: &Element, name: &str) -> Option<String> {
        let v = self.cmd("GET", &format!("/element/{}/attribute/{name}", e.0), None).await.unwrap();
        v.as_str().map(str::to_string)
    }

    pub async fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({}))).await.unwrap();
    }

    /// Finds `css` and clicks it, again if the live updates replaced the
    /// element in between (a stale reference) or it is not there yet.
    pub async fn click_css(&self, css: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let clicked = match self.find(css).await {
                Ok(e) => self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({}))).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                // The click opened a dialog (hx-confirm): the caller handles it.
                Err(e) if e.error == "unexpected alert open" => return,
                Err(e) if Instant::now() > deadline => {
                    self.screenshot("timeout").await;
                    panic!("clicking {css}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.cmd("POST", &format!("/element/{}/value", e.0), Some(json!({ "text": text }))).await.unwrap();
    }

    pub async fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// The text of an open alert/confirm/prompt, if one is open.
    pub async fn alert_text(&self) -> Option<String> {
        match self.cmd("GET", "/alert/text", None).await {
            Ok(v) => Some(v.as_str().unwrap_or_default().to_string()),
            Err(e) if e.error == "no such alert" => None,
            Err(e) => panic!("asking for an alert: {e}"),
        }
    }

    pub async fn accept_alert(&self) {
        self.cmd("POST", "/alert/accept", Some(json!({}))).await.unwrap();
    }

    /// Saves a PNG of the viewport as `<artifacts>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.artifacts.join(format!("{name}.png"));
        match self.cmd("GET", "/screenshot", None).await {
            Ok(v) => {
                let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap();
                std::fs::write(&path, png).unwrap();
                eprintln!("screenshot: {}", path.display());
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends Chromium; chromedriver is killed right after.
            let port = self.port;
            let path = format!("/session/{}", self.session);
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(rt) = rt {
                    let _ = rt.block_on(async move {
                        tokio::time::timeout(Duration::from_secs(10), http::request(port, "DELETE", &path, None)).await
                    });
                }
            })
            .join();
        }
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
