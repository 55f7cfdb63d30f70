//! imagegen: bootable Raspberry Pi images for armfleet workers.
#![deny(missing_docs)]
