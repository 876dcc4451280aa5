//! Key lifecycle through the real `aws-sdk-kms` client: tags (TagResource, UntagResource,
//! ListResourceTags, Tags on CreateKey) with AWS's limits, UpdateKeyDescription, and
//! `aws:ResourceTag` conditions in key policies.

mod api_support;
mod common;
mod sdk;

use sdk::code;

use api_support::{server, REGION};
use aws_sdk_kms::types::Tag;
use aws_sdk_kms::Client;
use common::dev_credentials;

fn client() -> Client {
    let (id, secret) = dev_credentials();
    sdk::client(&server().endpoint, REGION, &id, &secret, None)
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().tag_key(k).tag_value(v).build().expect("tag")
}

async fn tags_of(c: &Client, key: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let page = c
            .list_resource_tags()
            .key_id(key)
            .set_marker(marker)
            .limit(7)
            .send()
            .await
            .expect("list tags");
        out.extend(
            page.tags()
                .iter()
                .map(|t| (t.tag_key().to_owned(), t.tag_value().to_owned())),
        );
        if !page.truncated() {
            return out;
        }
        marker = page.next_marker().map(str::to_owned);
    }
}

#[tokio::test]
async fn tags_are_added_replaced_removed_and_listed_in_pages() {
    let c = client();
    let key = c
        .create_key()
        .tags(tag("team", "a"))
        .tags(tag("env", "ci"))
        .send()
        .await
        .expect("create")
        .key_metadata
        .expect("metadata")
        .key_id;
    assert_eq!(
        tags_of(&c, &key).await,
        [("env", "ci"), ("team", "a")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    c.tag_resource()
        .key_id(&key)
        .tags(tag("team", "b"))
        .tags(tag("cost", ""))
        .send()
        .await
        .expect("tag");
    c.untag_resource()
        .key_id(&key)
        .tag_keys("env")
        .tag_keys("never-there")
        .send()
        .await
        .expect("untag");
    assert_eq!(
        tags_of(&c, &key).await,
        [("cost", ""), ("team", "b")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    // 50 tags at most; paging over all of them.
    let many: Vec<Tag> = (0..48).map(|i| tag(&format!("k{i:02}"), "v")).collect();
    c.tag_resource()
        .key_id(&key)
        .set_tags(Some(many))
        .send()
        .await
        .expect("50 tags");
    assert_eq!(tags_of(&c, &key).await.len(), 50);
    assert_eq!(
        code(
            c.tag_resource()
                .key_id(&key)
                .tags(tag("one-more", "x"))
                .send()
                .await
        ),
        "TagException"
    );
    assert_eq!(
        code(
            c.tag_resource()
                .key_id(&key)
                .tags(tag("aws:reserved", "x"))
                .send()
                .await
        ),
        "TagException"
    );
    assert_eq!(
        code(
            c.list_resource_tags()
                .key_id(&key)
                .marker("nope")
                .send()
                .await
        ),
        "InvalidMarkerException"
    );
    assert_eq!(
        code(
            c.tag_resource()
                .key_id("alias/none")
                .tags(tag("a", "b"))
                .send()
                .await
        ),
        "NotFoundException"
    );
    // A key pending deletion is not tagged.
    c.schedule_key_deletion()
        .key_id(&key)
        .pending_window_in_days(7)
        .send()
        .await
        .expect("schedule");
    assert_eq!(
        code(
            c.tag_resource()
                .key_id(&key)
                .tags(tag("x", "y"))
                .send()
                .await
        ),
        "KMSInvalidStateException"
    );
    assert_eq!(tags_of(&c, &key).await.len(), 50, "still listed");
}

#[tokio::test]
async fn descriptions_are_updated() {
    let c = client();
    let key = c
        .create_key()
        .description("first")
        .send()
        .await
        .expect("create")
        .key_metadata
        .expect("metadata")
        .key_id;
    c.update_key_description()
        .key_id(&key)
        .description("second")
        .send()
        .await
        .expect("update");
    let m = c
        .describe_key()
        .key_id(&key)
        .send()
        .await
        .expect("describe")
        .key_metadata
        .expect("metadata");
    assert_eq!(m.description(), Some("second"));
    assert_eq!(
        code(
            c.update_key_description()
                .key_id(&key)
                .description("d".repeat(8193))
                .send()
                .await
        ),
        "ValidationException"
    );
}

#[tokio::test]
async fn resource_tags_feed_key_policy_conditions() {
    let c = client();
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*",
         "Condition":{"StringEquals":{"aws:ResourceTag/frozen":"yes"}}}]}"#;
    let key = c
        .create_key()
        .policy(policy)
        .send()
        .await
        .expect("create")
        .key_metadata
        .expect("metadata")
        .key_id;
    let enc = || {
        c.encrypt()
            .key_id(&key)
            .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
            .send()
    };
    enc().await.expect("not frozen yet");
    c.tag_resource()
        .key_id(&key)
        .tags(tag("frozen", "yes"))
        .send()
        .await
        .expect("tag");
    assert_eq!(code(enc().await), "AccessDeniedException");
    c.untag_resource()
        .key_id(&key)
        .tag_keys("frozen")
        .send()
        .await
        .expect("untag");
    enc().await.expect("thawed");
}
