//! A reviewer for tests: known tokens, a rule for accesses, counted calls, a switch
//! that makes every review fail, and a latency for token reviews (with the most seen in
//! flight at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Access, ReviewError, Reviewer, User};

type Rule = Box<dyn Fn(&Access<'_>) -> bool + Send + Sync>;

pub(crate) struct FakeReviewer {
    tokens: HashMap<String, User>,
    rule: Mutex<Rule>,
    pub(crate) token_reviews: AtomicUsize,
    pub(crate) access_reviews: AtomicUsize,
    pub(crate) failing: AtomicBool,
    /// How long each token review takes.
    pub(crate) latency: Mutex<Duration>,
    in_flight: AtomicUsize,
    /// The most token reviews seen in flight at once.
    pub(crate) most_in_flight: AtomicUsize,
}

impl FakeReviewer {
    /// Knows `tokens` (token, user name, groups); allows what `rule` allows.
    pub(crate) fn new(
        tokens: &[(&str, &str, &[&str])],
        rule: impl Fn(&Access<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|(t, name, groups)| {
                    let user = User {
                        name: (*name).to_owned(),
                        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                        ..User::default()
                    };
                    ((*t).to_owned(), user)
                })
                .collect(),
            rule: Mutex::new(Box::new(rule)),
            token_reviews: AtomicUsize::new(0),
            access_reviews: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            latency: Mutex::new(Duration::ZERO),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        }
    }

    pub(crate) fn set_rule(&self, rule: impl Fn(&Access<'_>) -> bool + Send + Sync + 'static) {
        *self.rule.lock().expect("rule lock") = Box::new(rule);
    }

    fn fail(&self) -> Result<(), ReviewError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(ReviewError::Timeout(std::time::Duration::from_secs(10)))
        } else {
            Ok(())
        }
    }
}

impl Reviewer for FakeReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, ReviewError>> {
        self.token_reviews.fetch_add(1, Ordering::SeqCst);
        let answer = self.fail().map(|()| self.tokens.get(token).cloned());
        let latency = *self.latency.lock().expect("latency lock");
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            answer
        })
    }

    fn review_access<'a>(&'a self, access: Access<'a>) -> BoxFuture<'a, Result<bool, ReviewError>> {
        self.access_reviews.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .fail()
            .map(|()| (self.rule.lock().expect("rule lock"))(&access));
        Box::pin(async move { answer })
    }
}
