//! The contenders of a lock, as kazoo's `Lock` recipe names and orders them.
//!
//! A contender is a child of the lock's node named `<32 hex digits>__lock__<sequence>`: kazoo
//! creates `<lock>/<uuid4 hex>__lock__` with the sequence flag, and ZooKeeper appends a
//! ten-digit sequence number (`-?\d{10}` in kazoo's pattern: past 2^31 it wraps negative).
//! Contenders are ordered by that sequence number, as kazoo sorts them; any other child is not a
//! contender (kazoo ignores it too). The lowest holds a mutex; each waiter watches only the one
//! just ahead of it.
//!
//! With `--holders N` (N > 1) the contenders form a semaphore, designed as etcd's: the first
//! ones hold, a contender holds only if fewer contenders are ahead of it than its own `N` and
//! than the `N` of every contender ahead (a kazoo contender, or a plain `elect run`, counts 1),
//! so that a semaphore user does not join a mutex holder, nor a mutex user a semaphore's.
//! kazoo's own `Semaphore` recipe keeps its leases under another node (`<path>/leases`, behind a
//! `<path>/lock` mutex) and does not mix with its `Lock`; elect does not use it.

/// The part of a contender's name between its id and its sequence number.
pub const NODE_NAME: &str = "__lock__";

/// One contender, from its node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    pub name: String,
    /// The sequence number as kazoo compares it: the ten-digit text, sign included.
    pub sequence: String,
}

/// The contender a child's name stands for, if it is one.
pub fn contender(name: &str) -> Option<Contender> {
    let at = name.rfind(NODE_NAME)?;
    let sequence = &name[at + NODE_NAME.len()..];
    let digits = sequence.strip_prefix('-').unwrap_or(sequence);
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| Contender {
        name: name.to_owned(),
        sequence: sequence.to_owned(),
    })
}

/// The contenders among a lock node's children, in kazoo's order.
pub fn contenders(children: &[String]) -> Vec<Contender> {
    let mut found: Vec<Contender> = children.iter().filter_map(|c| contender(c)).collect();
    // kazoo sorts the regex groups, that is the sequence text; ties cannot happen (ZooKeeper
    // never gives one parent's children the same sequence number).
    found.sort_by(|a, b| a.sequence.cmp(&b.sequence));
    found
}

/// Whether a contender that takes part with `places` holds, given the `places` of every
/// contender ahead of it, in order.
pub fn admitted(ahead: &[u32], places: u32) -> bool {
    let n = ahead.len();
    n < places as usize && ahead.iter().all(|&p| n < p.max(1) as usize)
}

/// How many of the contenders (their `places`, in order) hold the lock.
pub fn holding(places: &[u32]) -> usize {
    (0..places.len())
        .take_while(|&i| admitted(&places[..i], places[i]))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kazoo_names_are_contenders_in_sequence_order() {
        let children = [
            "b1946ac92492d2347c6235b4d2611184__lock__0000000012".to_owned(),
            "elect-billing.last".to_owned(),
            "x__lock__0000000003".to_owned(),
            "y__lock__000000003".to_owned(),
            "z__lock__0000000009".to_owned(),
        ];
        let order: Vec<String> = contenders(&children).into_iter().map(|c| c.name).collect();
        assert_eq!(
            order,
            [
                "x__lock__0000000003",
                "z__lock__0000000009",
                "b1946ac92492d2347c6235b4d2611184__lock__0000000012"
            ]
        );
        assert!(contender("a__rlock__0000000001").is_none());
        assert!(contender("a__lock__-0000000001").is_some());
    }

    #[test]
    fn semaphore_places() {
        assert!(admitted(&[], 1));
        assert!(!admitted(&[1], 1));
        assert!(admitted(&[2], 2));
        // A mutex holder ahead keeps a semaphore user out, and the other way round.
        assert!(!admitted(&[1], 2));
        assert!(!admitted(&[2], 1));
        assert_eq!(holding(&[2, 2, 2]), 2);
        assert_eq!(holding(&[1, 2]), 1);
        assert_eq!(holding(&[3, 3, 1]), 2);
        assert_eq!(holding(&[]), 0);
    }
}
