//! How the control API finds an object a user names: by full ID, by name, or by a unique ID
//! prefix (Docker's rule). Each module turns a miss into its own error.

/// Why a reference found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Nothing has this ID, name or ID prefix.
    NotFound,
    /// The ID prefix fits more than one object.
    Ambiguous,
}

/// The object whose ID or name is `reference`, else the one whose ID starts with it.
pub(crate) fn find<'a, T: 'a>(
    all: impl IntoIterator<Item = &'a T>,
    reference: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> Result<&'a T, Miss> {
    let all: Vec<&T> = all.into_iter().collect();
    if let Some(exact) = all.iter().find(|o| id(o) == reference || name(o) == reference) {
        return Ok(exact);
    }
    let mut by_prefix =
        all.iter().filter(|o| !reference.is_empty() && id(o).starts_with(reference));
    match (by_prefix.next(), by_prefix.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(Miss::NotFound),
        (Some(_), Some(_)) => Err(Miss::Ambiguous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_unique_prefixes_find_their_object() {
        let all = [("abc1", "web"), ("abd2", "db"), ("xyz", "abc1x")];
        let find = |r: &str| find(&all, r, |o| o.0, |o| o.1).map(|o| o.1);
        assert_eq!(find("abc1"), Ok("web"));
        assert_eq!(find("db"), Ok("db"));
        assert_eq!(find("abc1x"), Ok("abc1x"), "a name wins over an ID prefix");
        assert_eq!(find("abd"), Ok("db"));
        assert_eq!(find("ab"), Err(Miss::Ambiguous));
        assert_eq!(find("q"), Err(Miss::NotFound));
        assert_eq!(find(""), Err(Miss::NotFound), "an empty reference finds nothing");
    }
}
