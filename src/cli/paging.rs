//! Every page of ListKeys, ListAliases and ListGrants, following NextMarker: `key list`,
//! `alias list` and `grant list` without --limit, `token info`/`sweep`, and the bench's
//! scale run.

use crate::error::Result;
use crate::kms::types::{
    ListAliasesResponse, ListGrantsRequest, ListGrantsResponse, ListKeysResponse, ListRequest,
};
use crate::kms::Kms;

/// The largest page the list operations serve.
const PAGE: i64 = 1000;

/// Fetches pages starting after `marker` until one is not truncated. `fetch` gets the marker
/// of its page and returns the page's items, `Truncated` and `NextMarker`. Returns every item
/// and the last page's `Truncated`.
fn every_page<T>(
    mut marker: Option<String>,
    mut fetch: impl FnMut(Option<String>) -> Result<(Vec<T>, bool, Option<String>)>,
) -> Result<(Vec<T>, bool)> {
    let mut items = Vec::new();
    loop {
        let (page, truncated, next) = fetch(marker.take())?;
        items.extend(page);
        match next {
            Some(m) if truncated => marker = Some(m),
            _ => return Ok((items, truncated)),
        }
    }
}

/// ListKeys from after `marker` to the end, as one response (no NextMarker).
pub(crate) fn all_keys(kms: &Kms, marker: Option<String>) -> Result<ListKeysResponse> {
    let (keys, truncated) = every_page(marker, |marker| {
        let page = kms.list_keys(ListRequest {
            scope: None,
            limit: Some(PAGE),
            marker,
            key_id: None,
        })?;
        Ok((page.keys, page.truncated, page.next_marker))
    })?;
    Ok(ListKeysResponse {
        keys,
        next_marker: None,
        truncated,
    })
}

/// ListAliases (of `key`, or all) from after `marker` to the end, as one response.
pub(crate) fn all_aliases(
    kms: &Kms,
    key: Option<String>,
    marker: Option<String>,
) -> Result<ListAliasesResponse> {
    let (aliases, truncated) = every_page(marker, |marker| {
        let page = kms.list_aliases(ListRequest {
            scope: None,
            limit: Some(PAGE),
            marker,
            key_id: key.clone().map(Into::into),
        })?;
        Ok((page.aliases, page.truncated, page.next_marker))
    })?;
    Ok(ListAliasesResponse {
        aliases,
        next_marker: None,
        truncated,
    })
}

/// ListGrants of `req`'s key (with its filters) from after its marker to the end, as one
/// response.
pub(crate) fn all_grants(kms: &Kms, req: ListGrantsRequest) -> Result<ListGrantsResponse> {
    let (grants, truncated) = every_page(req.marker.clone(), |marker| {
        let page = kms.list_grants(ListGrantsRequest {
            limit: Some(100),
            marker,
            ..req.clone()
        })?;
        Ok((page.grants, page.truncated, page.next_marker))
    })?;
    Ok(ListGrantsResponse {
        grants,
        next_marker: None,
        truncated,
    })
}
