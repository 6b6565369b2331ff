//! Generic page-table builder (one walker, one entry format per flavour).
