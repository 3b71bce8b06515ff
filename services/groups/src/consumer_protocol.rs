//! Just enough of Kafka's consumer embedded protocol (the bytes a consumer
//! puts in its join metadata and the leader in its assignment) to answer
//! "which topics is this group subscribed to" and "which partitions does this
//! member own". The broker otherwise relays these bytes untouched.
//!
//! Both structures start `version: int16` followed by non-flexible fields in
//! every version, so one bounds-checked reader serves them all; a count
//! larger than the bytes left is refused before anything is allocated.

use std::collections::BTreeSet;

use crate::group::Group;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        self.take(len)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
    /// An array count, refused if even minimal elements could not fit.
    fn count(&mut self, min_element: usize) -> Option<usize> {
        let n = self.i32()?;
        if n < 0 {
            return Some(0);
        }
        let n = n as usize;
        (n.saturating_mul(min_element) <= self.0.len()).then_some(n)
    }
}

/// Topics of a `ConsumerProtocolSubscription`.
pub fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader(metadata);
    r.i16()?;
    let n = r.count(2)?;
    (0..n).map(|_| r.string()).collect()
}

/// Partitions of a `ConsumerProtocolAssignment`, by topic.
pub fn assignment_partitions(assignment: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    if assignment.is_empty() {
        return Some(Vec::new());
    }
    let mut r = Reader(assignment);
    r.i16()?;
    let n = r.count(6)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = r.string()?;
        let m = r.count(4)?;
        let partitions = (0..m).map(|_| r.i32()).collect::<Option<Vec<i32>>>()?;
        out.push((topic, partitions));
    }
    Some(out)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// A `ConsumerProtocolSubscription` v0 of these topics (for describing
/// KIP-848 groups the way tools expect).
pub fn encode_subscription(topics: &BTreeSet<String>) -> bytes::Bytes {
    let mut out = vec![0, 0];
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        put_string(&mut out, t);
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.into()
}

/// A `ConsumerProtocolAssignment` v0 of these partitions.
pub fn encode_assignment(
    assigned: &std::collections::BTreeMap<String, BTreeSet<i32>>,
) -> bytes::Bytes {
    let mut out = vec![0, 0];
    out.extend_from_slice(&(assigned.len() as i32).to_be_bytes());
    for (t, ps) in assigned {
        put_string(&mut out, t);
        out.extend_from_slice(&(ps.len() as i32).to_be_bytes());
        for p in ps {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.into()
}

/// Every topic an active member of a consumer group subscribes to.
pub fn subscribed_topics(group: &Group) -> BTreeSet<String> {
    if group.protocol_type.as_deref() != Some("consumer") {
        return BTreeSet::new();
    }
    group
        .describe()
        .members
        .iter()
        .filter_map(|m| subscription_topics(&m.metadata))
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn reads_subscriptions_and_assignments() {
        let mut sub = vec![0, 1];
        sub.extend_from_slice(&2i32.to_be_bytes());
        string(&mut sub, "a");
        string(&mut sub, "bb");
        sub.extend_from_slice(&(-1i32).to_be_bytes()); // null user data
        assert_eq!(subscription_topics(&sub).unwrap(), vec!["a", "bb"]);

        let mut asg = vec![0, 0];
        asg.extend_from_slice(&1i32.to_be_bytes());
        string(&mut asg, "a");
        asg.extend_from_slice(&2i32.to_be_bytes());
        asg.extend_from_slice(&3i32.to_be_bytes());
        asg.extend_from_slice(&5i32.to_be_bytes());
        assert_eq!(
            assignment_partitions(&asg).unwrap(),
            vec![("a".to_string(), vec![3, 5])]
        );
        assert_eq!(assignment_partitions(&[]).unwrap(), vec![]);
        // What we encode for KIP-848 groups reads back the same way.
        let topics: BTreeSet<String> = ["x".to_string(), "y".to_string()].into();
        assert_eq!(
            subscription_topics(&encode_subscription(&topics)).unwrap(),
            vec!["x", "y"]
        );
        let assigned = [("x".to_string(), BTreeSet::from([1, 4]))].into();
        assert_eq!(
            assignment_partitions(&encode_assignment(&assigned)).unwrap(),
            vec![("x".to_string(), vec![1, 4])]
        );
    }

    #[test]
    fn refuses_lying_counts_and_truncation() {
        let mut sub = vec![0, 1];
        sub.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(subscription_topics(&sub).is_none());
        assert!(subscription_topics(&[0]).is_none());
        let mut asg = vec![0, 0];
        asg.extend_from_slice(&1i32.to_be_bytes());
        string(&mut asg, "a");
        asg.extend_from_slice(&1000i32.to_be_bytes());
        assert!(assignment_partitions(&asg).is_none());
    }
}
