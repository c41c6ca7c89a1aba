//! The connection table: slots indexed by mio token, reused through a free
//! list so that tokens stay small and lookups are an index.

pub struct Table<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Table<T> {
    pub fn new() -> Table<T> {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// The slot the next `insert` will use.
    pub fn vacant_slot(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn remove(&mut self, slot: usize) -> Option<T> {
        let value = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }

    pub fn slots(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused() {
        let mut t = Table::new();
        let a = t.insert('a');
        let b = t.insert('b');
        assert_eq!(t.vacant_slot(), 2);
        assert_eq!(t.remove(a), Some('a'));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.vacant_slot(), a);
        assert_eq!(t.insert('c'), a);
        assert_eq!(t.get_mut(b), Some(&mut 'b'));
        assert_eq!(t.len(), 2);
        assert_eq!(t.slots(), vec![a, b]);
    }
}
