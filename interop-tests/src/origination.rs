//! An origination simulator standing in for Twilio's Elastic SIP Trunking (issue 17): a trunk's
//! origination URIs each carry a priority (lower is tried first) and a weight (the share of calls
//! among URIs of equal priority). For each call Twilio picks a URI of the lowest priority by
//! weight, and when that URI answers 503 or cannot be reached it tries the next: the remaining
//! URIs of the same priority (again by weight), then those of the next priority. Any other final
//! answer ends the call there.
//!
//! The choice is pure and deterministic for a seed ([`Origination::order`]); the attempt itself
//! (TLS connect, INVITE, final response) is the caller's closure, so that tests can place real
//! calls with it ([`try_in_order`]) from several threads at once.

/// One origination URI: where it leads (`T`: an address, an index), its priority and weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginationUri<T> {
    pub target: T,
    /// Lower first.
    pub priority: u16,
    /// Share among the URIs of the same priority; 0 is tried only after every weighted one.
    pub weight: u16,
}

/// How one attempt on one URI ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 OK: the call is up.
    Answered,
    /// 503 Service Unavailable: try the next URI.
    ServiceUnavailable,
    /// No TCP or TLS connection (or no answer in time): try the next URI.
    ConnectFailed,
    /// Any other final status: the call ends here.
    Final(u16),
}

impl Outcome {
    /// Twilio tries the next URI after this outcome.
    pub fn fails_over(self) -> bool {
        matches!(self, Outcome::ServiceUnavailable | Outcome::ConnectFailed)
    }
}

/// What became of one call: every attempt in order, and the URI that answered (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub attempts: Vec<(usize, Outcome)>,
    pub answered_by: Option<usize>,
}

/// SplitMix64 (Steele, Lea and Flood 2014): small, seedable, good enough to spread test calls.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by rejection so that no value is favoured.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// A trunk's origination URIs and the random source that spreads calls among them.
pub struct Origination<T> {
    uris: Vec<OriginationUri<T>>,
    rng: SplitMix64,
}

impl<T> Origination<T> {
    pub fn new(uris: Vec<OriginationUri<T>>, seed: u64) -> Origination<T> {
        Origination {
            uris,
            rng: SplitMix64::new(seed),
        }
    }

    pub fn uris(&self) -> &[OriginationUri<T>] {
        &self.uris
    }

    /// The order in which one call tries the URIs (indices into [`Origination::uris`]):
    /// priorities ascending; within a priority, a weighted draw without replacement (each
    /// remaining URI next with probability weight / remaining weight, RFC 2782's selection),
    /// weight-0 URIs last.
    pub fn order(&mut self) -> Vec<usize> {
        let mut priorities: Vec<u16> = self.uris.iter().map(|u| u.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut out = Vec::with_capacity(self.uris.len());
        for p in priorities {
            let mut group: Vec<usize> = (0..self.uris.len())
                .filter(|&i| self.uris[i].priority == p && self.uris[i].weight > 0)
                .collect();
            while !group.is_empty() {
                let total: u64 = group.iter().map(|&i| u64::from(self.uris[i].weight)).sum();
                let mut pick = self.rng.below(total);
                let pos = group
                    .iter()
                    .position(|&i| {
                        let w = u64::from(self.uris[i].weight);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    // pick < total = the sum of the group's weights: some URI holds it.
                    .expect("pick below the total weight");
                out.push(group.remove(pos));
            }
            out.extend(
                (0..self.uris.len())
                    .filter(|&i| self.uris[i].priority == p && self.uris[i].weight == 0),
            );
        }
        out
    }

    /// Places one call: draws its order and tries it ([`try_in_order`]).
    pub fn place(&mut self, attempt: impl FnMut(usize, &T) -> Outcome) -> Placed {
        let order = self.order();
        let uris = &self.uris;
        let mut attempt = attempt;
        try_in_order(&order, |i| attempt(i, &uris[i].target))
    }
}

/// Tries URIs in `order` until one answers or gives a final status other than 503; a 503 or a
/// connect failure moves on to the next. All failing over leaves `answered_by` empty.
pub fn try_in_order(order: &[usize], mut attempt: impl FnMut(usize) -> Outcome) -> Placed {
    let mut attempts = Vec::new();
    for &i in order {
        let outcome = attempt(i);
        attempts.push((i, outcome));
        if outcome == Outcome::Answered {
            return Placed {
                attempts,
                answered_by: Some(i),
            };
        }
        if !outcome.fails_over() {
            break;
        }
    }
    Placed {
        attempts,
        answered_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(target: &'static str, priority: u16, weight: u16) -> OriginationUri<&'static str> {
        OriginationUri {
            target,
            priority,
            weight,
        }
    }

    /// How often each URI comes first in `n` orders.
    fn first_counts(o: &mut Origination<&'static str>, n: usize) -> Vec<usize> {
        let mut counts = vec![0; o.uris().len()];
        for _ in 0..n {
            counts[o.order()[0]] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_spread_calls_evenly() {
        let mut o = Origination::new(vec![uri("a", 10, 10), uri("b", 10, 10)], 1);
        let c = first_counts(&mut o, 10_000);
        assert!((4_800..=5_200).contains(&c[0]), "{c:?}");
        assert_eq!(c[0] + c[1], 10_000);
    }

    #[test]
    fn weights_set_the_shares() {
        let mut o = Origination::new(
            vec![uri("a", 10, 30), uri("b", 10, 10), uri("c", 10, 60)],
            7,
        );
        let c = first_counts(&mut o, 10_000);
        assert!((2_800..=3_200).contains(&c[0]), "{c:?}");
        assert!((800..=1_200).contains(&c[1]), "{c:?}");
        assert!((5_800..=6_200).contains(&c[2]), "{c:?}");
    }

    #[test]
    fn lower_priority_value_first_and_every_uri_once() {
        let mut o = Origination::new(
            vec![
                uri("backup", 20, 10),
                uri("a", 10, 10),
                uri("b", 10, 5),
                uri("idle", 10, 0),
            ],
            3,
        );
        for _ in 0..1_000 {
            let order = o.order();
            assert_eq!(order.len(), 4, "{order:?}");
            // The priority-10 URIs by weight, the weight-0 one after them, then priority 20.
            let mut head = order[..2].to_vec();
            head.sort_unstable();
            assert_eq!(head, vec![1, 2], "{order:?}");
            assert_eq!(&order[2..], &[3, 0], "{order:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_calls() {
        let uris = vec![uri("a", 10, 10), uri("b", 10, 10), uri("c", 20, 1)];
        let mut x = Origination::new(uris.clone(), 42);
        let mut y = Origination::new(uris.clone(), 42);
        let mut z = Origination::new(uris, 43);
        let xs: Vec<_> = (0..50).map(|_| x.order()).collect();
        let ys: Vec<_> = (0..50).map(|_| y.order()).collect();
        let zs: Vec<_> = (0..50).map(|_| z.order()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn fails_over_on_503_and_connect_failure_only() {
        let mut o = Origination::new(
            vec![uri("a", 10, 10), uri("b", 20, 10), uri("c", 30, 10)],
            5,
        );
        // a answers 503, b cannot be reached, c answers.
        let p = o.place(|_, t| match *t {
            "a" => Outcome::ServiceUnavailable,
            "b" => Outcome::ConnectFailed,
            _ => Outcome::Answered,
        });
        assert_eq!(p.answered_by, Some(2));
        assert_eq!(
            p.attempts,
            vec![
                (0, Outcome::ServiceUnavailable),
                (1, Outcome::ConnectFailed),
                (2, Outcome::Answered)
            ]
        );
        // Any other final status ends the call at that URI.
        let p = o.place(|_, t| match *t {
            "a" => Outcome::Final(486),
            _ => Outcome::Answered,
        });
        assert_eq!(p.answered_by, None);
        assert_eq!(p.attempts, vec![(0, Outcome::Final(486))]);
        // Every URI failing over: the call is lost, each tried once.
        let p = o.place(|_, _| Outcome::ServiceUnavailable);
        assert_eq!(p.answered_by, None);
        assert_eq!(p.attempts.len(), 3);
    }

    #[test]
    fn a_refusing_uri_sends_its_share_to_the_others() {
        // Two URIs 10/10; "a" drains (503): every call ends on "b", half of them after trying
        // "a" first.
        let mut o = Origination::new(vec![uri("a", 10, 10), uri("b", 10, 10)], 9);
        let mut via_a = 0;
        for _ in 0..1_000 {
            let p = o.place(|_, t| {
                if *t == "a" {
                    Outcome::ServiceUnavailable
                } else {
                    Outcome::Answered
                }
            });
            assert_eq!(p.answered_by, Some(1));
            if p.attempts.len() == 2 {
                via_a += 1;
            }
        }
        assert!((430..=570).contains(&via_a), "{via_a}");
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SplitMix64::new(0);
        for n in [1u64, 2, 3, 7, 1 << 40] {
            for _ in 0..100 {
                assert!(r.below(n) < n);
            }
        }
    }
}
