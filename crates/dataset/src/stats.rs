//! Dataset statistics that need the whole interaction graph: k-cores.

use std::collections::HashMap;

/// Size of a k-core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KCore {
    pub k: usize,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
}

/// The k-core of a user-item graph: repeatedly drop users and items with fewer than `k`
/// interactions until none is left. `pairs` are (user, item), one per interaction.
pub fn kcore(pairs: &[(i32, i32)], k: usize) -> KCore {
    let mut alive = vec![true; pairs.len()];
    loop {
        let mut users: HashMap<i32, usize> = HashMap::new();
        let mut items: HashMap<i32, usize> = HashMap::new();
        for (i, &(u, it)) in pairs.iter().enumerate() {
            if alive[i] {
                *users.entry(u).or_default() += 1;
                *items.entry(it).or_default() += 1;
            }
        }
        let mut changed = false;
        for (i, &(u, it)) in pairs.iter().enumerate() {
            if alive[i] && (users[&u] < k || items[&it] < k) {
                alive[i] = false;
                changed = true;
            }
        }
        if !changed {
            return KCore {
                k,
                users: users.len(),
                items: items.len(),
                interactions: alive.iter().filter(|a| **a).count(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_until_stable() {
        // Users 1 and 2 rated items 10 and 11; user 3 rated only item 12 (and item 10).
        let pairs = [(1, 10), (1, 11), (2, 10), (2, 11), (3, 12), (3, 10)];
        assert_eq!(kcore(&pairs, 1), KCore { k: 1, users: 3, items: 3, interactions: 6 });
        // k = 2: item 12 goes, then user 3 has one interaction left and goes too.
        assert_eq!(kcore(&pairs, 2), KCore { k: 2, users: 2, items: 2, interactions: 4 });
        assert_eq!(kcore(&pairs, 3), KCore { k: 3, users: 0, items: 0, interactions: 0 });
    }
}
