//! Record ids: UUIDv7 (RFC 9562), time-ordered so that new records append to the B-tree and id
//! order is insertion order.

use blazedb_format::Date;
use uuid::Uuid;

/// Makes UUIDv7s that increase strictly, even within one millisecond or when the wall clock
/// steps back. The 74 bits after the timestamp start at a random value each millisecond (so two
/// replicas do not collide) and count up within it ("method 2" of RFC 9562 §6.2), which needs
/// one call to the operating system's random source per millisecond instead of one per id.
#[derive(Debug, Default)]
pub struct IdGenerator {
    millis: u64,
    counter: u128,
}

const COUNTER_BITS: u32 = 74;

impl IdGenerator {
    pub fn next(&mut self) -> Uuid {
        let now = Date::now().unix_millis().max(0) as u64;
        if now > self.millis {
            self.millis = now;
            self.reseed();
        } else {
            self.counter += 1;
            if self.counter >> COUNTER_BITS != 0 {
                // Counter exhausted within this millisecond: borrow the next one.
                self.millis += 1;
                self.reseed();
            }
        }
        let millis = self.millis & ((1 << 48) - 1);
        let rand_a = (self.counter >> 62) as u16 & 0x0FFF;
        let rand_b = (self.counter as u64) & ((1 << 62) - 1);
        let bits = (u128::from(millis) << 80)
            | (0x7 << 76)
            | (u128::from(rand_a) << 64)
            | (0b10 << 62)
            | u128::from(rand_b);
        Uuid::from_u128(bits)
    }

    fn reseed(&mut self) {
        // A random start with the top bit clear leaves room to count up within the millisecond.
        let random = Uuid::new_v4().as_u128();
        self.counter = random & ((1 << (COUNTER_BITS - 1)) - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_and_strictly_increasing() {
        let mut g = IdGenerator::default();
        let mut last = g.next();
        for _ in 0..100_000 {
            let id = g.next();
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert!(id > last);
            last = id;
        }
    }

    #[test]
    fn ids_keep_increasing_when_the_clock_is_behind() {
        let mut g = IdGenerator {
            millis: u64::MAX >> 17,
            counter: 0,
        };
        let a = g.next();
        let b = g.next();
        assert!(b > a);
    }
}
