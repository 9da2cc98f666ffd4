//! An ordered list of `name=value` pairs kept as bytes, shared by the U-Boot and GRUB codecs so
//! that variables otter does not understand (even non-UTF-8 ones) survive a rewrite unchanged.

/// Ordered variables; names are unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VarList {
    vars: Vec<(Vec<u8>, Vec<u8>)>,
}

impl VarList {
    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// Sets `name`; an existing variable keeps its position, a new one goes last.
    pub(crate) fn set(&mut self, name: &[u8], value: &[u8]) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.vars.push((name.to_vec(), value.to_vec())),
        }
    }

    pub(crate) fn remove(&mut self, name: &[u8]) -> bool {
        let before = self.vars.len();
        self.vars.retain(|(n, _)| n != name);
        self.vars.len() != before
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    pub(crate) fn len(&self) -> usize {
        self.vars.len()
    }
}
