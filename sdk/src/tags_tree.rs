//! `TagsTree<K>`: an inverted index from `(name, value)` to keys, answering "who has these tags".

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::tags::Tags;

/// An index of keys (connections, recorded requests, …) by their tags.
///
/// `find_by_tags(query)` returns the keys whose tags contain every pair of `query` (AND); an
/// empty query matches every key. It walks the smallest posting list among the query's pairs and
/// checks the other pairs against each candidate's own tags, so its cost follows the number of
/// matches, not the number of keys.
///
/// ```
/// use tagcast::{Tags, TagsTree};
///
/// let mut tree = TagsTree::new();
/// tree.add(1, Tags::new().with("language", "FR").with("user", 42));
/// tree.add(2, Tags::new().with("language", "EN"));
/// assert_eq!(tree.find_by_tags(&Tags::new().with("language", "FR")), vec![1]);
/// assert_eq!(tree.find_by_tags(&Tags::new().with("user", "42")), vec![1]);
/// assert_eq!(tree.find_by_tags(&Tags::new()).len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct TagsTree<K> {
    /// Every key with its own tags, to check the pairs a posting list walk did not use.
    entries: HashMap<K, Tags>,
    /// name -> canonical value -> the keys having that pair.
    index: HashMap<String, HashMap<String, Posting<K>>>,
}

/// The keys of one `(name, value)` pair. Most pairs of a per-user tag have one key: a set for
/// each would cost a hash table per connection.
#[derive(Debug, Clone)]
enum Posting<K> {
    One(K),
    Many(HashSet<K>),
}

impl<K: Hash + Eq + Clone> Posting<K> {
    fn len(&self) -> usize {
        match self {
            Posting::One(_) => 1,
            Posting::Many(keys) => keys.len(),
        }
    }

    fn insert(&mut self, key: K) {
        match self {
            Posting::One(existing) if *existing == key => {}
            Posting::One(existing) => {
                let mut keys = HashSet::with_capacity(2);
                keys.insert(existing.clone());
                keys.insert(key);
                *self = Posting::Many(keys);
            }
            Posting::Many(keys) => {
                keys.insert(key);
            }
        }
    }

    /// Removes `key`; returns whether the posting is now empty.
    fn remove(&mut self, key: &K) -> bool {
        let last = match self {
            Posting::One(existing) => return existing == key,
            Posting::Many(keys) => {
                keys.remove(key);
                if keys.len() != 1 {
                    return keys.is_empty();
                }
                keys.drain().next()
            }
        };
        if let Some(last) = last {
            *self = Posting::One(last);
        }
        false
    }

    fn for_each(&self, mut f: impl FnMut(&K)) {
        match self {
            Posting::One(key) => f(key),
            Posting::Many(keys) => keys.iter().for_each(f),
        }
    }
}

impl<K> Default for TagsTree<K> {
    fn default() -> Self {
        TagsTree {
            entries: HashMap::new(),
            index: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> TagsTree<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes `key` with `tags`, replacing what it had.
    pub fn add(&mut self, key: K, tags: Tags) {
        self.delete(&key);
        for (name, value) in tags.iter() {
            let values = self.index.entry(name.to_owned()).or_default();
            match values.get_mut(value.canonical().as_ref()) {
                Some(posting) => posting.insert(key.clone()),
                None => {
                    values.insert(value.canonical().into_owned(), Posting::One(key.clone()));
                }
            }
        }
        self.entries.insert(key, tags);
    }

    /// Removes `key`; returns its tags when it was indexed.
    pub fn delete(&mut self, key: &K) -> Option<Tags> {
        let tags = self.entries.remove(key)?;
        for (name, value) in tags.iter() {
            let Some(values) = self.index.get_mut(name) else {
                continue;
            };
            let canonical = value.canonical();
            if let Some(posting) = values.get_mut(canonical.as_ref()) {
                if posting.remove(key) {
                    values.remove(canonical.as_ref());
                }
            }
            if values.is_empty() {
                self.index.remove(name);
            }
        }
        Some(tags)
    }

    /// Whether `key` is indexed.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The tags `key` was indexed with.
    pub fn tags_of(&self, key: &K) -> Option<&Tags> {
        self.entries.get(key)
    }

    /// How many keys are indexed.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Removes every key.
    pub fn reset(&mut self) {
        self.entries.clear();
        self.index.clear();
    }

    /// Calls `f` with each key whose tags contain `query`, without allocating.
    pub fn for_each_match(&self, query: &Tags, mut f: impl FnMut(&K)) {
        if query.is_empty() {
            self.entries.keys().for_each(f);
            return;
        }
        // The smallest posting list bounds the work; a missing pair means no match at all.
        let mut smallest: Option<(&Posting<K>, &str)> = None;
        for (name, value) in query.iter() {
            let Some(keys) = self
                .index
                .get(name)
                .and_then(|values| values.get(value.canonical().as_ref()))
            else {
                return;
            };
            if smallest.is_none_or(|(s, _)| keys.len() < s.len()) {
                smallest = Some((keys, name));
            }
        }
        let Some((keys, used)) = smallest else {
            return;
        };
        if query.len() == 1 {
            keys.for_each(f);
            return;
        }
        keys.for_each(|key| {
            let Some(own) = self.entries.get(key) else {
                return;
            };
            if query
                .iter()
                .all(|(n, v)| n == used || own.get(n) == Some(v))
            {
                f(key);
            }
        });
    }

    /// The keys whose tags contain `query`, in no particular order.
    pub fn find_by_tags(&self, query: &Tags) -> Vec<K> {
        let mut out = Vec::new();
        self.for_each_match(query, |k| out.push(k.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TagValue;
    use proptest::prelude::*;

    fn tags_strategy() -> impl Strategy<Value = Tags> {
        // Few names and values, so that queries hit often; values mix integers and their text.
        let value = prop_oneof![
            (0i64..4).prop_map(TagValue::Integer),
            (0i64..4).prop_map(|i| TagValue::String(i.to_string())),
            Just(TagValue::String("04".into())),
        ];
        proptest::collection::btree_map("[a-c]", value, 0..4)
            .prop_map(|m| m.into_iter().collect::<Tags>())
    }

    proptest! {
        #[test]
        fn find_by_tags_equals_a_brute_force_scan(
            entries in proptest::collection::vec(tags_strategy(), 0..40),
            deleted in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            query in tags_strategy(),
        ) {
            let mut tree = TagsTree::new();
            let mut live: HashMap<usize, Tags> = HashMap::new();
            for (i, t) in entries.iter().enumerate() {
                tree.add(i, t.clone());
                live.insert(i, t.clone());
            }
            if !entries.is_empty() {
                for d in deleted {
                    let k = d.index(entries.len());
                    tree.delete(&k);
                    live.remove(&k);
                }
            }
            let mut got = tree.find_by_tags(&query);
            got.sort();
            let mut want: Vec<usize> = live
                .iter()
                .filter(|(_, t)| t.contains_all(&query))
                .map(|(k, _)| *k)
                .collect();
            want.sort();
            prop_assert_eq!(got, want);
            prop_assert_eq!(tree.count(), live.len());
        }
    }

    #[test]
    fn delete_and_reset_leave_nothing_behind() {
        let mut tree = TagsTree::new();
        tree.add("a", Tags::new().with("x", 1));
        tree.add("a", Tags::new().with("y", 2));
        assert!(tree.find_by_tags(&Tags::new().with("x", 1)).is_empty());
        assert_eq!(tree.delete(&"a"), Some(Tags::new().with("y", 2)));
        assert!(tree.index.is_empty() && tree.count() == 0 && !tree.contains(&"a"));
        tree.add("b", Tags::new());
        tree.reset();
        assert_eq!(tree.count(), 0);
    }
}
