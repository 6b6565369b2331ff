//! aarch64: EL2 setup, translation-table formats, exceptions, PL011.
