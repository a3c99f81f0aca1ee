//! Shell globs on one host label, with the syntax of Go's `filepath.Match` (which the
//! kubelet's keyring uses), matched without backtracking blow-up.
//!
//! `*` matches any run of characters, `?` one character, `[a-z]`/`[^a-z]` one character
//! of (or not of) a class, `\c` the character `c`. A malformed pattern (`[`, `[]`,
//! `[a-]`, a trailing `\`) matches nothing, as the kubelet ignores its error.
//!
//! Matching keeps only the last `*` as a resumption point (a glob's stars need no more),
//! so it takes at most `(pattern tokens + 1) × (label characters + 1)` steps, whatever the
//! pattern: `*a*a*a*a*b` against a long run of `a` is quadratic, not exponential.

/// One element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`.
    Star,
    /// `?`.
    Any,
    /// A literal character.
    Char(char),
    /// `[...]`: inclusive ranges, negated with `^`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether this single-character token matches `c`. Host labels never hold the path
    /// separator `/`, which `*` and `?` would not match.
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star => true,
            Token::Any => c != '/',
            Token::Char(x) => *x == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

/// A possibly escaped class character (Go's `getEsc`): not `-` or `]` unescaped, and
/// something must follow it.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    let c = match chars.next()? {
        '-' | ']' => return None,
        '\\' => chars.next()?,
        c => c,
    };
    chars.peek()?;
    Some(c)
}

/// The tokens of `pattern`; `None` when it is malformed. Runs of `*` become one.
fn parse(pattern: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            '*' => {
                if tokens.last() == Some(&Token::Star) {
                    continue;
                }
                Token::Star
            }
            '?' => Token::Any,
            '\\' => Token::Char(chars.next()?),
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    let lo = class_char(&mut chars)?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        class_char(&mut chars)?
                    } else {
                        lo
                    };
                    ranges.push((lo, hi));
                }
                Token::Class { negated, ranges }
            }
            c => Token::Char(c),
        };
        tokens.push(token);
    }
    Some(tokens)
}

/// Matches `tokens` against all of `text`, counting the steps taken.
fn run(tokens: &[Token], text: &[char], steps: &mut u64) -> bool {
    let (mut p, mut t) = (0, 0);
    // The token after the last `*` seen, and the text position that `*` resumes from.
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        *steps += 1;
        match tokens.get(p) {
            Some(Token::Star) => {
                p += 1;
                resume = Some((p, t));
            }
            Some(token) if token.matches(text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                // The last `*` takes one more character (never a `/`), and matching
                // goes on from just after it.
                Some((after, from)) if text[from] != '/' => {
                    p = after;
                    t = from + 1;
                    resume = Some((after, t));
                }
                _ => return false,
            },
        }
    }
    tokens[p..].iter().all(|token| *token == Token::Star)
}

/// Whether the glob `pattern` matches all of `label`; a malformed pattern matches
/// nothing.
#[must_use]
pub fn matches(pattern: &str, label: &str) -> bool {
    let mut steps = 0;
    matches_counting(pattern, label, &mut steps)
}

fn matches_counting(pattern: &str, label: &str, steps: &mut u64) -> bool {
    let Some(tokens) = parse(pattern) else {
        return false;
    };
    let text: Vec<char> = label.chars().collect();
    run(&tokens, &text, steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_filepath_match_semantics() {
        for (pattern, label, expected) in [
            ("*", "registry", true),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("reg*", "registry", true),
            ("*try", "registry", true),
            ("r?g*y", "registry", true),
            ("r?g*y", "rgistry", false),
            ("[a-c]b", "bb", true),
            ("[^a-c]b", "bb", false),
            ("[^a-c]b", "xb", true),
            ("[\\]]", "]", true),
            ("[*]", "*", true),
            ("[*]", "a", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a*b*c", "abxbxc", true),
            ("a*b*c", "abxbx", false),
            ("ü?", "üx", true),
            // Malformed: no match, whatever the label.
            ("[", "[", false),
            ("[]", "]", false),
            ("[]a]", "]", false),
            ("[a-]", "a", false),
            ("[a", "a", false),
            ("a\\", "a", false),
            ("[^]", "a", false),
        ] {
            assert_eq!(matches(pattern, label), expected, "{pattern:?} {label:?}");
        }
    }

    #[test]
    fn pathological_patterns_take_bounded_steps() {
        // With the old recursive matcher this is about C(60, 20) ≈ 4e15 calls.
        let pattern = format!("{}b", "*a".repeat(20));
        let label = "a".repeat(60);
        let mut steps = 0;
        assert!(!matches_counting(&pattern, &label, &mut steps));
        let tokens = parse(&pattern).expect("valid").len() as u64;
        assert!(steps <= (tokens + 1) * 61, "{steps} steps");

        let pattern = "*a".repeat(1000);
        let label = "a".repeat(5000);
        let mut steps = 0;
        assert!(matches_counting(&pattern, &label, &mut steps));
        assert!(steps <= 2001 * 5001, "{steps} steps");
    }

    /// Reference: whether tokens[i..] match text[j..], memoised over (i, j).
    fn reference(tokens: &[Token], text: &[char]) -> bool {
        let (n, m) = (tokens.len(), text.len());
        // dp[i][j]: tokens[i..] match text[j..].
        let mut dp = vec![vec![false; m + 1]; n + 1];
        dp[n][m] = true;
        for i in (0..n).rev() {
            for j in (0..=m).rev() {
                dp[i][j] = match &tokens[i] {
                    Token::Star => dp[i + 1][j] || (j < m && text[j] != '/' && dp[i][j + 1]),
                    token => j < m && token.matches(text[j]) && dp[i + 1][j + 1],
                };
            }
        }
        dp[0][0]
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(
            pattern in "[ab*?\\[\\]^\\\\-]{0,12}",
            label in "[ab\\]^*-]{0,12}",
        ) {
            let expected = parse(&pattern).is_some_and(|t| {
                reference(&t, &label.chars().collect::<Vec<_>>())
            });
            prop_assert_eq!(matches(&pattern, &label), expected);
        }

        #[test]
        fn never_panics(pattern in any::<String>(), label in any::<String>()) {
            let _ = matches(&pattern, &label);
        }
    }
}
