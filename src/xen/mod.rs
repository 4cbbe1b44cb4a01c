//! Xen: the `block-iscsimple` hotplug script's logic (`iscsimple xen
//! add|remove`) and the xenstore client it talks through.
pub mod hotplug;
pub mod xenstore;
