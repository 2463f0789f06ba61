//! Shared renders of the live fragments. When a change is pushed, every
//! viewer of a page fetches its fragment again in the same moment; 50
//! viewers of one rollout would mean 50 identical reads and renders. Here
//! the first request of a (role, URL) renders and the others wait for it and
//! get the same HTML, as long as no newer change was pushed and the render
//! is younger than `max_age` (presence changes with time alone, without a
//! change event).

use super::error::DashResult;
use maud::Markup;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on remembered fragments (distinct filter URLs): beyond it the
/// table starts afresh.
const MAX_KEYS: usize = 1024;

type Slot = Arc<tokio::sync::Mutex<Option<(u64, Instant, Arc<str>)>>>;

#[derive(Debug)]
pub struct FragmentCache {
    slots: Mutex<HashMap<String, Slot>>,
    max_age: Duration,
}

impl FragmentCache {
    pub fn new(max_age: Duration) -> Self {
        Self { slots: Mutex::new(HashMap::new()), max_age }
    }

    /// The fragment for `key` rendered at live-update `generation`, rendering
    /// it (once, however many ask at the same time) if there is none.
    pub async fn get_or_render<F, Fut>(&self, key: String, generation: u64, render: F) -> DashResult<Arc<str>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = DashResult<Markup>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() >= MAX_KEYS && !slots.contains_key(&key) {
                slots.clear();
            }
            slots.entry(key).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some((rendered_at, when, html)) = held.as_ref() {
            if *rendered_at == generation && when.elapsed() < self.max_age {
                return Ok(html.clone());
            }
        }
        let html: Arc<str> = render().await?.into_string().into();
        *held = Some((generation, Instant::now(), html.clone()));
        Ok(html)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maud::html;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_render_per_generation_and_key() {
        let cache = FragmentCache::new(Duration::from_secs(60));
        let renders = AtomicUsize::new(0);
        let render = || async {
            renders.fetch_add(1, Ordering::SeqCst);
            Ok(html! { p { "x" } })
        };
        let a = cache.get_or_render("k".into(), 1, render).await.unwrap();
        let b = cache.get_or_render("k".into(), 1, render).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        cache.get_or_render("k".into(), 2, render).await.unwrap();
        cache.get_or_render("other".into(), 2, render).await.unwrap();
        assert_eq!(renders.load(Ordering::SeqCst), 3);
        let stale = FragmentCache::new(Duration::ZERO);
        stale.get_or_render("k".into(), 1, render).await.unwrap();
        stale.get_or_render("k".into(), 1, render).await.unwrap();
        assert_eq!(renders.load(Ordering::SeqCst), 5);
    }
}
