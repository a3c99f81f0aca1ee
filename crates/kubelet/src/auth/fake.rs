//! A reviewer for tests: known tokens, a rule for accesses, counted calls, and a switch
//! that makes every review fail.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::future::BoxFuture;

use super::{Access, ReviewError, Reviewer, User};

type Rule = Box<dyn Fn(&Access<'_>) -> bool + Send + Sync>;

pub(crate) struct FakeReviewer {
    tokens: HashMap<String, User>,
    rule: Mutex<Rule>,
    pub(crate) token_reviews: AtomicUsize,
    pub(crate) access_reviews: AtomicUsize,
    pub(crate) failing: AtomicBool,
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
        Box::pin(async move { answer })
    }

    fn review_access<'a>(&'a self, access: Access<'a>) -> BoxFuture<'a, Result<bool, ReviewError>> {
        self.access_reviews.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .fail()
            .map(|()| (self.rule.lock().expect("rule lock"))(&access));
        Box::pin(async move { answer })
    }
}
