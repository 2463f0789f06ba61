//! The WebDriver harness itself, against a page of our own: headless
//! Chromium starts, finds elements, types, clicks, runs script, reports an
//! alert when one fires (and none when none does), takes a screenshot, and
//! goes away with its chromedriver.

mod browser;

use browser::Browser;
use std::time::Duration;

const PAGE: &str = "<!doctype html><title>harness</title>\
<input id=name><button id=go onclick=\"document.getElementById('out').textContent='hello '+document.getElementById('name').value\">go</button>\
<button id=warn onclick=\"alert('boom')\">warn</button><p id=out></p>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_is_driven_over_webdriver() {
    let Some(b) = Browser::start("harness").await else { return };
    b.goto(&format!("data:text/html,{}", PAGE.replace('#', "%23").replace(' ', "%20"))).await;
    let name = b.wait_for("#name", Duration::from_secs(10)).await;
    b.type_into(&name, "fleet").await;
    b.click(&b.find("#go").await.unwrap()).await;
    let out = b.find("#out").await.unwrap();
    assert_eq!(b.text(&out).await, "hello fleet");
    assert!(b.find("#absent").await.is_err_and(|e| e.error == "no such element"));
    assert_eq!(b.alert_text().await, None, "no alert before one is raised");
    b.click(&b.find("#warn").await.unwrap()).await;
    assert_eq!(b.alert_text().await.as_deref(), Some("boom"));
    b.accept_alert().await;
    let title = b.execute("return document.title", serde_json::json!([])).await.unwrap();
    assert_eq!(title, "harness");
    let png = b.screenshot("harness").await;
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
}
