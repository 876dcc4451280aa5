//! Tags and descriptions: TagResource, UntagResource, ListResourceTags, UpdateKeyDescription,
//! and the tag rules CreateKey shares. Tags live in the key's record (crash-safe like every
//! record) and feed the `aws:ResourceTag/<key>` condition key.

use super::super::domain::KeyState;
use super::super::records::KeyRecord;
use super::super::store::{Change, KeyEntry};
use super::super::types::{
    ListResourceTagsRequest, ListResourceTagsResponse, Tag, TagResourceRequest,
    UntagResourceRequest, UpdateKeyDescriptionRequest,
};
use super::super::{Forms, Kms};
use super::{check_limit, required, unavailable_state};
use crate::error::{KmsError, Result};

/// AWS's quota of tags per key.
pub(crate) const MAX_TAGS: usize = 50;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
const MAX_DESCRIPTION: usize = 8192;

/// Characters AWS allows in tag keys and values: letters, digits, spaces and `_.:/=+-@`.
fn tag_chars_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c))
}

/// A tag key's rules (`TagException` for what the model allows but KMS refuses).
pub(crate) fn check_tag_key(k: &str) -> Result<()> {
    crate::kms::validation::length(
        "tagKey",
        crate::kms::validation::Shown::Value(k.to_owned()),
        k.chars().count(),
        1,
        MAX_TAG_KEY,
    )?;
    if !tag_chars_ok(k) {
        return Err(KmsError::tag(format!(
            "Tag key {k} contains characters that are not allowed"
        )));
    }
    if k.len() >= 4 && k[..4].eq_ignore_ascii_case("aws:") {
        return Err(KmsError::tag(format!(
            "Tag keys beginning with aws: are reserved for AWS use: {k}"
        )));
    }
    Ok(())
}

fn check_tag(t: &Tag) -> Result<()> {
    check_tag_key(&t.tag_key)?;
    crate::kms::validation::length(
        "tagValue",
        crate::kms::validation::Shown::Value(t.tag_value.clone()),
        t.tag_value.chars().count(),
        0,
        MAX_TAG_VALUE,
    )?;
    if !tag_chars_ok(&t.tag_value) {
        return Err(KmsError::tag(format!(
            "The value of tag {} contains characters that are not allowed",
            t.tag_key
        )));
    }
    Ok(())
}

/// Tags of a request, checked, duplicates refused; `existing` are kept unless replaced.
pub(crate) fn merged_tags(
    existing: &[(String, String)],
    new: &[Tag],
) -> Result<Vec<(String, String)>> {
    let mut seen = std::collections::HashSet::new();
    for t in new {
        check_tag(t)?;
        if !seen.insert(t.tag_key.as_str()) {
            return Err(KmsError::tag(format!("Duplicate tag key {}", t.tag_key)));
        }
    }
    let mut out: Vec<(String, String)> = existing
        .iter()
        .filter(|(k, _)| !seen.contains(k.as_str()))
        .cloned()
        .collect();
    out.extend(new.iter().map(|t| (t.tag_key.clone(), t.tag_value.clone())));
    if out.len() > MAX_TAGS {
        return Err(KmsError::tag(format!(
            "A key can have at most {MAX_TAGS} tags; this request would give it {}",
            out.len()
        )));
    }
    out.sort();
    Ok(out)
}

pub(crate) fn check_description(d: &str) -> Result<()> {
    crate::kms::validation::length(
        "description",
        crate::kms::validation::Shown::Value(d.to_owned()),
        d.chars().count(),
        0,
        MAX_DESCRIPTION,
    )
}

impl Kms {
    /// Changes a key's record by `edit` (a management change: refused while the key is
    /// pending deletion, as AWS does, and for records this version cannot read).
    fn edit_record(
        &self,
        of: KeyEntry,
        edit: impl FnOnce(&KeyRecord) -> Result<Option<KeyRecord>>,
    ) -> Result<()> {
        self.update_entry(
            &of,
            |entry: &KeyEntry| {
                let arn = self.key_arn(&entry.record);
                match entry.record.state {
                    KeyState::Unknown => return Err(unavailable_state(&arn)),
                    KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                        return Err(KmsError::invalid_state(format!(
                            "{arn} is pending deletion."
                        )))
                    }
                    _ => {}
                }
                Ok(match edit(&entry.record)? {
                    Some(r) => Change::Write(r),
                    None => Change::Keep,
                })
            },
            |_| Ok(()),
        )?;
        Ok(())
    }

    /// TagResource: adds tags, replacing the values of keys it names again.
    pub fn tag_resource(&self, req: TagResourceRequest) -> Result<()> {
        let tags = required(req.tags, "tags")?;
        let (_, of) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.edit_record(of, |r| {
            let tags = merged_tags(&r.tags, &tags)?;
            Ok((tags != r.tags).then(|| KeyRecord { tags, ..r.clone() }))
        })
    }

    /// UntagResource: removes the tags of these keys (keys it does not have are ignored).
    pub fn untag_resource(&self, req: UntagResourceRequest) -> Result<()> {
        let keys = required(req.tag_keys, "tagKeys")?;
        if keys.len() > MAX_TAGS {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value at 'tagKeys' failed to satisfy constraint: \
                 Member must have length less than or equal to {MAX_TAGS}"
            )));
        }
        for k in &keys {
            check_tag_key(k)?;
        }
        let (_, of) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.edit_record(of, |r| {
            let tags: Vec<(String, String)> = r
                .tags
                .iter()
                .filter(|(k, _)| !keys.contains(k))
                .cloned()
                .collect();
            Ok((tags.len() != r.tags.len()).then(|| KeyRecord { tags, ..r.clone() }))
        })
    }

    /// ListResourceTags: in key order, paged (Limit 1 to 50, default 50).
    pub fn list_resource_tags(
        &self,
        req: ListResourceTagsRequest,
    ) -> Result<ListResourceTagsResponse> {
        let limit = check_limit(req.limit, MAX_TAGS)?.min(MAX_TAGS);
        if req.limit.is_some_and(|l| l > MAX_TAGS as i64) {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value at 'limit' failed to satisfy constraint: \
                 Member must have value less than or equal to {MAX_TAGS}"
            )));
        }
        let (_, entry) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        let mut tags = entry.record.tags.clone();
        tags.sort();
        let start = match &req.marker {
            None => 0,
            Some(m) => tags
                .iter()
                .position(|(k, _)| k == m)
                .map(|i| i + 1)
                .ok_or_else(|| KmsError::invalid_marker(format!("Invalid marker {m}")))?,
        };
        let page: Vec<Tag> = tags
            .iter()
            .skip(start)
            .take(limit)
            .map(|(k, v)| Tag {
                tag_key: k.clone(),
                tag_value: v.clone(),
            })
            .collect();
        let truncated = start + page.len() < tags.len();
        Ok(ListResourceTagsResponse {
            next_marker: truncated
                .then(|| page.last().map(|t| t.tag_key.clone()))
                .flatten(),
            tags: page,
            truncated,
        })
    }

    /// UpdateKeyDescription.
    pub fn update_key_description(&self, req: UpdateKeyDescriptionRequest) -> Result<()> {
        let description = required(req.description, "description")?;
        check_description(&description)?;
        let (_, of) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.edit_record(of, |r| {
            Ok((r.description != description).then(|| KeyRecord {
                description: description.clone(),
                ..r.clone()
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            tag_key: k.into(),
            tag_value: v.into(),
        }
    }

    #[test]
    fn tags_merge_replace_and_are_bounded() {
        let existing = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ];
        let m = merged_tags(&existing, &[tag("b", "3"), tag("c", "")]).unwrap();
        assert_eq!(
            m,
            [("a", "1"), ("b", "3"), ("c", "")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let e = merged_tags(&[], &[tag("x", "1"), tag("x", "2")]).unwrap_err();
        assert_eq!(e.aws_name(), "TagException");
        let many: Vec<Tag> = (0..51).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert_eq!(
            merged_tags(&[], &many).unwrap_err().aws_name(),
            "TagException"
        );
        assert!(merged_tags(&[], &many[..50]).is_ok());
    }

    #[test]
    fn tag_rules() {
        assert_eq!(
            check_tag_key("aws:x").unwrap_err().aws_name(),
            "TagException"
        );
        assert_eq!(
            check_tag_key("AWS:x").unwrap_err().aws_name(),
            "TagException"
        );
        assert_eq!(
            check_tag_key("").unwrap_err().aws_name(),
            "ValidationException"
        );
        assert_eq!(
            check_tag_key(&"k".repeat(129)).unwrap_err().aws_name(),
            "ValidationException"
        );
        assert_eq!(
            check_tag_key("semi;colon").unwrap_err().aws_name(),
            "TagException"
        );
        assert!(check_tag_key("team/owner:x=1 +@-_.").is_ok());
        assert_eq!(
            check_tag(&tag("k", &"v".repeat(257)))
                .unwrap_err()
                .aws_name(),
            "ValidationException"
        );
        assert!(check_description(&"d".repeat(8192)).is_ok());
        assert!(check_description(&"d".repeat(8193)).is_err());
    }
}
