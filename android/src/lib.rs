//! phonectl: phones as k3s workers, over ADB.
#![deny(missing_docs)]
