//! Who may do what: repository globs, principals and the policy that combines admins, user
//! namespaces, robot scopes and configured rules.

use crate::config::{Action, AuthConfig};
use serde::{Deserialize, Serialize};

/// A set of [`Action`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    /// Nothing.
    pub const NONE: Actions = Actions(0);
    /// Pull, push and delete.
    pub const ALL: Actions = Actions(0b111);

    fn bit(a: Action) -> u8 {
        match a {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }

    /// The set of `actions`.
    pub fn of(actions: &[Action]) -> Actions {
        Actions(actions.iter().fold(0, |acc, a| acc | Self::bit(*a)))
    }

    /// Whether `a` is in the set.
    pub fn has(self, a: Action) -> bool {
        self.0 & Self::bit(a) != 0
    }

    /// Union.
    pub fn union(self, o: Actions) -> Actions {
        Actions(self.0 | o.0)
    }

    /// Intersection.
    pub fn intersect(self, o: Actions) -> Actions {
        Actions(self.0 & o.0)
    }

    /// The actions, in token-spec order (pull, push, delete).
    pub fn list(self) -> Vec<Action> {
        [Action::Pull, Action::Push, Action::Delete]
            .into_iter()
            .filter(|a| self.has(*a))
            .collect()
    }
}

/// Matches a repository name against a glob: `*` matches within one path component, `**`
/// matches any number of whole components (including none when it is not the only part).
pub fn glob_match(glob: &str, name: &str) -> bool {
    fn rec(g: &[&str], n: &[&str]) -> bool {
        match g.split_first() {
            None => n.is_empty(),
            Some((&"**", rest)) => (0..=n.len()).any(|i| rec(rest, &n[i..])) && (!rest.is_empty() || !n.is_empty()),
            Some((seg, rest)) => match n.split_first() {
                Some((first, nrest)) => component_match(seg, first) && rec(rest, nrest),
                None => false,
            },
        }
    }
    let g: Vec<&str> = glob.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    rec(&g, &n)
}

/// `*` wildcards inside one component.
fn component_match(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// What a robot may do, set when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotScope {
    /// Repository globs.
    pub repos: Vec<String>,
    /// Actions on them.
    pub actions: Vec<Action>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth mode `none`: everything is allowed.
    Open,
    /// No credentials.
    Anonymous,
    /// A signed-in person.
    User(String),
    /// A robot account, limited to its scopes.
    Robot {
        /// `robot$name`.
        name: String,
        /// Its ceiling.
        scopes: Vec<RobotScope>,
    },
}

impl Principal {
    /// Name for logs and token subjects.
    pub fn name(&self) -> &str {
        match self {
            Principal::Open | Principal::Anonymous => "",
            Principal::User(n) | Principal::Robot { name: n, .. } => n,
        }
    }
}

/// The policy: evaluates what a principal may do on a repository.
#[derive(Debug, Clone)]
pub struct Policy {
    config: AuthConfig,
}

impl Policy {
    /// A policy from the auth configuration.
    pub fn new(config: AuthConfig) -> Self {
        Policy { config }
    }

    fn is_admin(&self, user: &str) -> bool {
        self.config.admins.iter().any(|a| a == user)
    }

    fn in_group(&self, user: &str, group: &str) -> bool {
        self.config
            .groups
            .get(group)
            .is_some_and(|m| m.iter().any(|u| u == user))
    }

    /// What `p` may do on `repo`. Whatever anonymous clients may do, signed-in ones may too:
    /// after `docker login`, docker sends credentials on every request, and a public image
    /// must stay pullable.
    pub fn allowed(&self, p: &Principal, repo: &str) -> Actions {
        let anonymous = self.by_rules(repo, |r| r.anonymous);
        anonymous.union(self.allowed_as(p, repo))
    }

    fn allowed_as(&self, p: &Principal, repo: &str) -> Actions {
        match p {
            Principal::Open => Actions::ALL,
            Principal::User(u) if self.is_admin(u) => Actions::ALL,
            Principal::Robot { name, scopes } => {
                // Its own scopes (set at creation) plus rules that name it; never the
                // `authenticated` rules or a namespace: a robot is not a person.
                let own = scopes
                    .iter()
                    .filter(|s| s.repos.iter().any(|g| glob_match(g, repo)))
                    .fold(Actions::NONE, |acc, s| acc.union(Actions::of(&s.actions)));
                own.union(self.by_rules(repo, |r| r.robots.iter().any(|n| n == name)))
            }
            Principal::User(u) => {
                let own = self.config.user_namespaces && (repo == u || repo.starts_with(&format!("{u}/")));
                let base = if own { Actions::ALL } else { Actions::NONE };
                base.union(self.by_rules(repo, |r| {
                    r.authenticated || r.users.iter().any(|n| n == u) || r.groups.iter().any(|g| self.in_group(u, g))
                }))
            }
            Principal::Anonymous => self.by_rules(repo, |r| r.anonymous),
        }
    }

    fn by_rules(&self, repo: &str, applies: impl Fn(&crate::config::Rule) -> bool) -> Actions {
        self.config
            .rules
            .iter()
            .filter(|r| applies(r) && r.repos.iter().any(|g| glob_match(g, repo)))
            .fold(Actions::NONE, |acc, r| acc.union(Actions::of(&r.actions)))
    }

    /// Whether `p` may list the catalog (`registry:catalog:*`): admins only, since repository
    /// names can themselves be confidential.
    pub fn catalog(&self, p: &Principal) -> bool {
        match p {
            Principal::Open => true,
            Principal::User(u) => self.is_admin(u),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;

    #[test]
    fn globs() {
        assert!(glob_match("team/*", "team/app"));
        assert!(!glob_match("team/*", "team/a/b"));
        assert!(!glob_match("team/*", "team"));
        assert!(glob_match("team/**", "team/a/b"));
        assert!(glob_match("team/**", "team/a"));
        assert!(glob_match("**", "x"));
        assert!(glob_match("**", "x/y/z"));
        assert!(glob_match("**/app", "a/b/app"));
        assert!(glob_match("lib*/a*z", "library/abcz"));
        assert!(!glob_match("lib*/a*z", "library/abc"));
        assert!(!glob_match("team/app", "team/app2"));
    }

    #[test]
    fn policy() {
        let config = AuthConfig {
            admins: vec!["root".into()],
            groups: [("devs".to_owned(), vec!["bob".to_owned()])].into_iter().collect(),
            rules: vec![
                Rule {
                    repos: vec!["public/**".into()],
                    anonymous: true,
                    actions: vec![Action::Pull],
                    ..Default::default()
                },
                Rule {
                    repos: vec!["team/*".into()],
                    groups: vec!["devs".into()],
                    robots: vec!["robot$ci".into()],
                    actions: vec![Action::Pull, Action::Push],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let p = Policy::new(config);
        let alice = Principal::User("alice".into());
        let bob = Principal::User("bob".into());
        assert_eq!(p.allowed(&alice, "alice/app"), Actions::ALL);
        assert_eq!(p.allowed(&alice, "alicex/app"), Actions::NONE);
        assert_eq!(p.allowed(&alice, "team/app"), Actions::NONE);
        assert_eq!(p.allowed(&bob, "team/app"), Actions::of(&[Action::Pull, Action::Push]));
        assert_eq!(
            p.allowed(&Principal::Anonymous, "public/x/y"),
            Actions::of(&[Action::Pull])
        );
        assert_eq!(p.allowed(&Principal::Anonymous, "team/app"), Actions::NONE);
        assert_eq!(p.allowed(&Principal::User("root".into()), "any/thing"), Actions::ALL);
        let robot = Principal::Robot {
            name: "robot$ci".into(),
            scopes: vec![RobotScope {
                repos: vec!["team/*".into()],
                actions: vec![Action::Pull],
            }],
        };
        // Its scope gives pull; the rule naming it adds push.
        assert_eq!(
            p.allowed(&robot, "team/app"),
            Actions::of(&[Action::Pull, Action::Push])
        );
        assert_eq!(p.allowed(&robot, "other/app"), Actions::NONE);
        let other = Principal::Robot {
            name: "robot$other".into(),
            scopes: vec![RobotScope {
                repos: vec!["team/*".into()],
                actions: vec![Action::Pull],
            }],
        };
        assert_eq!(p.allowed(&other, "team/app"), Actions::of(&[Action::Pull]));
        assert!(p.catalog(&Principal::User("root".into())));
        assert!(!p.catalog(&alice));
        assert!(!p.catalog(&Principal::Anonymous));
    }
}
