//! Fields kube-proxy acts on that ferry does not implement yet: each is
//! reported with its field path (and logged once per object), never
//! ignored without a word. The README's Service fields table lists them.
use super::objects::SliceObject;

use super::problem::Problem;

/// An EndpointSlice's fields ferry does not act on.
pub fn slice_fields(slice: &SliceObject, problems: &mut Vec<Problem>) {
    let mut problems = super::endpoints::slice_problems(slice, problems);
    if &*slice.address_type != "IPv4" {
        let message = format!(
            "{} endpoints are not served (IPv4 only)",
            slice.address_type
        );
        problems.push("addressType", message);
    }
}
