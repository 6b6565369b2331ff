//! x86_64: CPU setup, paging formats, exceptions, SVM (and later VMX).
