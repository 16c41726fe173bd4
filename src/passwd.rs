//! Local accounts from /etc/passwd (no NSS), both ways: the agent names a uid for
//! `unix:user:` selectors, the server resolves a `unix:user:` selector to its uid. One
//! parser, so both sides read the file the same way.

/// The user name of `uid`.
pub fn name_of(uid: u32) -> Option<String> {
    find(|name, entry_uid| (entry_uid == uid).then(|| name.to_owned()))
}

/// The uid of the user `name`.
pub fn uid_of(name: &str) -> Option<u32> {
    find(|entry_name, uid| (entry_name == name).then_some(uid))
}

/// The first `name:password:uid:…` line for which `pick` answers.
fn find<T>(pick: impl Fn(&str, u32) -> Option<T>) -> Option<T> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        pick(name, fields.next()?.parse().ok()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_both_ways() {
        assert_eq!(name_of(0).as_deref(), Some("root"));
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(uid_of("no such user, surely"), None);
    }
}
