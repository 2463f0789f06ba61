//! A real headless Chromium for the dashboard's browser tests, driven over
//! the W3C WebDriver protocol by Debian's chromedriver (both installed by
//! scripts/setup). [`Browser::start`] returns `None` (the test then skips
//! with a message) only when they are absent and `HARMONY_REQUIRE_BROWSER`
//! is unset; scripts/test sets it, so CI cannot skip silently.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod http;
mod webdriver;

#[allow(unused_imports)]
pub use webdriver::{Browser, Element, WebDriverError};
