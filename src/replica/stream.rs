//! What every source's byte stream goes through before it is parsed.

use std::io::Read;

/// The longest run of zero bytes a source may send: free space after the last record is at
/// most a few extension chunks (docs/format.md), and a record holds no such run (its data is
/// JSON text). Longer is a server streaming zeros forever: an error, not the end of the data.
const MAX_ZERO_RUN: u64 = 64 * 1024 * 1024;

/// A body that fails after [`MAX_ZERO_RUN`] zero bytes in a row.
pub struct ZeroRunLimit<R> {
    inner: R,
    zeros: u64,
}

impl<R: Read> ZeroRunLimit<R> {
    pub fn new(inner: R) -> Self {
        ZeroRunLimit { inner, zeros: 0 }
    }
}

impl<R: Read> Read for ZeroRunLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match buf[..n].iter().rposition(|&b| b != 0) {
            Some(last) => self.zeros = (n - last - 1) as u64,
            None => self.zeros += n as u64,
        }
        if self.zeros > MAX_ZERO_RUN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {MAX_ZERO_RUN} zero bytes in a row: not a segment"),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_run_of_zeros_is_an_error() {
        let mut zeros = ZeroRunLimit::new(std::io::repeat(0));
        let err = std::io::copy(&mut zeros, &mut std::io::sink()).expect_err("endless zeros");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // Zeros between non-zero bytes start the count again.
        let mut mixed = std::io::repeat(0).take(MAX_ZERO_RUN - 1).chain(&b"x"[..]);
        let mut mixed = mixed
            .by_ref()
            .chain(std::io::repeat(0).take(MAX_ZERO_RUN - 1));
        let mut limited = ZeroRunLimit::new(&mut mixed);
        assert_eq!(
            std::io::copy(&mut limited, &mut std::io::sink()).expect("within the limit"),
            2 * MAX_ZERO_RUN - 1
        );
    }
}
