//! Document-level tests of the policy engine, mostly on the AWS KMS Developer Guide's own
//! example policies.

use super::*;

const ACCT: &str = "111122223333";
const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const OTHER_KEY: &str =
    "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321";
const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
const ADMIN_USER: &str = "arn:aws:iam::111122223333:user/KMSAdminUser";
const ADMIN_ROLE: &str = "arn:aws:iam::111122223333:role/KMSAdminRole";
const EXAMPLE_USER: &str = "arn:aws:iam::111122223333:user/ExampleUser";
const EXAMPLE_ROLE: &str = "arn:aws:iam::111122223333:role/ExampleRole";

fn key(text: &str) -> PolicyDocument {
    PolicyDocument::parse(text, PolicyKind::Key).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn identity(text: &str) -> PolicyDocument {
    PolicyDocument::parse(text, PolicyKind::Identity).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A one-statement document around `statement`.
fn doc(statement: &str) -> String {
    format!(r#"{{"Version": "2012-10-17", "Statement": [{statement}]}}"#)
}

/// Evaluates as `principal` (of the account in its ARN) doing `action` on `resource`.
fn eval_in(
    d: &PolicyDocument,
    principal: &str,
    action: &str,
    resource: &str,
    ctx: &ConditionMap,
) -> Outcome {
    let account = principal.split(':').nth(4).unwrap_or("");
    d.evaluate(&Request {
        principal_arn: principal,
        principal_account: account,
        action,
        resource,
        context: ctx,
    })
}

fn eval(d: &PolicyDocument, principal: &str, action: &str) -> Outcome {
    eval_in(d, principal, action, KEY, &ConditionMap::new())
}

const NOTHING: Outcome = Outcome {
    deny: false,
    allow_direct: false,
    allow_account: false,
};
const DIRECT: Outcome = Outcome {
    allow_direct: true,
    ..NOTHING
};
const ACCOUNT: Outcome = Outcome {
    allow_account: true,
    ..NOTHING
};

const DEFAULT_TEXT: &str = r#"{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::111122223333:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}"#;

#[test]
fn default_key_policy_is_aws_text_and_delegates_to_the_account() {
    let d = PolicyDocument::default_key_policy(ACCT);
    assert_eq!(d.text(), DEFAULT_TEXT);
    assert_eq!(d.kind(), PolicyKind::Key);
    // Delegation, not a direct grant, for the account's users and roles.
    for p in [
        ALICE,
        EXAMPLE_ROLE,
        "arn:aws:sts::111122223333:assumed-role/ExampleRole/s1",
    ] {
        let o = eval(&d, p, "kms:Decrypt");
        assert_eq!(o, ACCOUNT, "{p}");
        assert!(!o.allows_directly());
    }
    // The account's root user is the account principal itself.
    assert_eq!(
        eval(&d, "arn:aws:iam::111122223333:root", "kms:PutKeyPolicy"),
        DIRECT
    );
    // Another account gets nothing; a non-KMS action gets nothing.
    assert_eq!(
        eval(&d, "arn:aws:iam::444455556666:user/alice", "kms:Decrypt"),
        NOTHING
    );
    assert_eq!(eval(&d, ALICE, "s3:GetObject"), NOTHING);
    // The text parses back to the same behaviour.
    let again = key(d.text());
    assert_eq!(eval(&again, ALICE, "kms:Encrypt"), ACCOUNT);
    // An odd account id cannot break the text or panic; it is escaped and still matched.
    let odd = PolicyDocument::default_key_policy("12\"3");
    assert!(
        odd.text().contains(r#""AWS" : "arn:aws:iam::12\"3:root""#),
        "{}",
        odd.text()
    );
    let o = odd.evaluate(&Request {
        principal_arn: "arn:aws:iam::12\"3:user/x",
        principal_account: "12\"3",
        action: "kms:Decrypt",
        resource: KEY,
        context: &ConditionMap::new(),
    });
    assert_eq!(o, ACCOUNT);
}

/// The console's default key policy (KMS Developer Guide, "Default key policy").
const CONSOLE_POLICY: &str = r#"{
  "Id": "key-consolepolicy-3",
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "Enable IAM policies",
      "Effect": "Allow",
      "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
      "Action": "kms:*",
      "Resource": "*"
    },
    {
      "Sid": "Allow access for Key Administrators",
      "Effect": "Allow",
      "Principal": {"AWS": [
        "arn:aws:iam::111122223333:user/KMSAdminUser",
        "arn:aws:iam::111122223333:role/KMSAdminRole"
      ]},
      "Action": [
        "kms:Create*",
        "kms:Describe*",
        "kms:Enable*",
        "kms:List*",
        "kms:Put*",
        "kms:Update*",
        "kms:Revoke*",
        "kms:Disable*",
        "kms:Get*",
        "kms:Delete*",
        "kms:TagResource",
        "kms:UntagResource",
        "kms:ScheduleKeyDeletion",
        "kms:CancelKeyDeletion"
      ],
      "Resource": "*"
    },
    {
      "Sid": "Allow use of the key",
      "Effect": "Allow",
      "Principal": {"AWS": [
        "arn:aws:iam::111122223333:user/ExampleUser",
        "arn:aws:iam::111122223333:role/ExampleRole",
        "arn:aws:iam::444455556666:root"
      ]},
      "Action": [
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncrypt*",
        "kms:GenerateDataKey*",
        "kms:DescribeKey"
      ],
      "Resource": "*"
    },
    {
      "Sid": "Allow attachment of persistent resources",
      "Effect": "Allow",
      "Principal": {"AWS": [
        "arn:aws:iam::111122223333:user/ExampleUser",
        "arn:aws:iam::111122223333:role/ExampleRole",
        "arn:aws:iam::444455556666:root"
      ]},
      "Action": [
        "kms:CreateGrant",
        "kms:ListGrants",
        "kms:RevokeGrant"
      ],
      "Resource": "*",
      "Condition": {"Bool": {"kms:GrantIsForAWSResource": true}}
    }
  ]
}"#;

#[test]
fn console_policy_administrators_and_users() {
    let d = key(CONSOLE_POLICY);
    let both = Outcome {
        allow_direct: true,
        allow_account: true,
        ..NOTHING
    };
    // Administrators manage the key directly, but do not use it (only via IAM policies).
    for admin in [ADMIN_USER, ADMIN_ROLE] {
        for a in [
            "kms:PutKeyPolicy",
            "kms:ScheduleKeyDeletion",
            "kms:DisableKey",
            "kms:GetKeyPolicy",
            "kms:CreateAlias",
        ] {
            assert_eq!(eval(&d, admin, a), both, "{admin} {a}");
        }
        assert_eq!(eval(&d, admin, "kms:Decrypt"), ACCOUNT, "{admin}");
    }
    // Key users use it directly.
    for user in [EXAMPLE_USER, EXAMPLE_ROLE] {
        for a in [
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:GenerateDataKeyPair",
            "kms:DescribeKey",
        ] {
            assert_eq!(eval(&d, user, a), both, "{user} {a}");
        }
        assert_eq!(eval(&d, user, "kms:PutKeyPolicy"), ACCOUNT, "{user}");
    }
    // A session of the key-user role is that role.
    let session = "arn:aws:sts::111122223333:assumed-role/ExampleRole/build-42";
    assert!(eval(&d, session, "kms:Decrypt").allows_directly());
    // The external account's principals: only by delegation to their account.
    let external = "arn:aws:iam::444455556666:user/bob";
    assert_eq!(eval(&d, external, "kms:Decrypt"), ACCOUNT);
    assert_eq!(eval(&d, external, "kms:PutKeyPolicy"), NOTHING);
    // Grants only for AWS resources.
    let for_aws = ConditionMap::new().with("kms:GrantIsForAWSResource", &["true"]);
    assert_eq!(
        eval_in(&d, EXAMPLE_USER, "kms:CreateGrant", KEY, &for_aws),
        both
    );
    let not_for_aws = ConditionMap::new().with("kms:GrantIsForAWSResource", &["false"]);
    assert_eq!(
        eval_in(&d, EXAMPLE_USER, "kms:CreateGrant", KEY, &not_for_aws),
        ACCOUNT
    );
    assert_eq!(
        eval(&d, EXAMPLE_USER, "kms:CreateGrant"),
        ACCOUNT,
        "key absent: Bool is false"
    );
    // Names are exact: another user of the account, a same-named user elsewhere.
    assert_eq!(
        eval(
            &d,
            "arn:aws:iam::111122223333:user/exampleuser",
            "kms:Decrypt"
        ),
        ACCOUNT
    );
    assert_eq!(
        eval(
            &d,
            "arn:aws:iam::999999999999:user/ExampleUser",
            "kms:Decrypt"
        ),
        NOTHING
    );
}

#[test]
fn deny_wins_and_is_reported_with_the_allow() {
    let d = key(r#"{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/alice"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:ScheduleKeyDeletion", "Resource": "*"}
    ]}"#);
    let o = eval(&d, ALICE, "kms:ScheduleKeyDeletion");
    assert_eq!(
        o,
        Outcome {
            deny: true,
            allow_direct: true,
            allow_account: false
        }
    );
    assert!(!o.allows_directly());
    assert!(eval(&d, ALICE, "kms:Decrypt").allows_directly());
    // A Deny naming the account reaches all of its principals.
    let d = key(&format!(
        "{{\"Statement\": [{}, {}]}}",
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}"#,
        r#"{"Effect": "Deny", "Principal": {"AWS": "111122223333"}, "Action": "kms:Decrypt", "Resource": "*"}"#
    ));
    assert!(eval(&d, ALICE, "kms:Decrypt").deny);
    assert!(!eval(&d, "arn:aws:iam::444455556666:user/x", "kms:Decrypt").deny);
    // The order of statements does not matter.
    let d = key(r#"{"Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}
    ]}"#);
    assert_eq!(
        eval(&d, ALICE, "kms:Decrypt"),
        Outcome {
            deny: true,
            allow_direct: true,
            allow_account: false
        }
    );
}

#[test]
fn not_principal_applies_to_everyone_else() {
    let d = key(r#"{"Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny",
         "NotPrincipal": {"AWS": ["arn:aws:iam::111122223333:role/KMSAdminRole", "444455556666"]},
         "Action": "kms:PutKeyPolicy", "Resource": "*"}
    ]}"#);
    assert!(eval(&d, ALICE, "kms:PutKeyPolicy").deny);
    assert!(!eval(&d, ADMIN_ROLE, "kms:PutKeyPolicy").deny);
    assert!(
        !eval(
            &d,
            "arn:aws:sts::111122223333:assumed-role/KMSAdminRole/s",
            "kms:PutKeyPolicy"
        )
        .deny
    );
    assert!(
        !eval(&d, "arn:aws:iam::444455556666:user/x", "kms:PutKeyPolicy").deny,
        "account entry exempts its principals"
    );
    assert!(!eval(&d, ALICE, "kms:Decrypt").deny);
    // An Allow with NotPrincipal allows the others directly.
    let d = key(&doc(
        r#"{"Effect": "Allow", "NotPrincipal": {"AWS": "arn:aws:iam::111122223333:user/alice"}, "Action": "kms:Decrypt", "Resource": "*"}"#,
    ));
    assert_eq!(eval(&d, EXAMPLE_USER, "kms:Decrypt"), DIRECT);
    assert_eq!(eval(&d, ALICE, "kms:Decrypt"), NOTHING);
}

#[test]
fn not_action_and_not_resource() {
    let d = key(&doc(
        r#"{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/alice"},
        "NotAction": ["kms:ScheduleKeyDeletion", "kms:Put*"], "Resource": "*"}"#,
    ));
    assert_eq!(eval(&d, ALICE, "kms:Decrypt"), DIRECT);
    assert_eq!(eval(&d, ALICE, "kms:scheduleKEYdeletion"), NOTHING);
    assert_eq!(eval(&d, ALICE, "kms:PutKeyPolicy"), NOTHING);
    let id = identity(&format!(
        r#"{{"Version": "2012-10-17", "Statement": {{"Effect": "Allow", "Action": "kms:*", "NotResource": "{KEY}"}}}}"#
    ));
    assert_eq!(
        eval_in(&id, ALICE, "kms:Decrypt", OTHER_KEY, &ConditionMap::new()),
        DIRECT
    );
    assert_eq!(
        eval_in(&id, ALICE, "kms:Decrypt", KEY, &ConditionMap::new()),
        NOTHING
    );
    assert_eq!(
        eval_in(&id, ALICE, "kms:ListKeys", "*", &ConditionMap::new()),
        DIRECT
    );
}

#[test]
fn action_wildcards_and_case() {
    let d = key(&doc(r#"{"Effect": "Allow", "Principal": "*",
        "Action": ["kms:Generate*", "KMS:DESCRIBEKEY", "kms:?ecrypt"], "Resource": "*"}"#));
    for (a, want) in [
        ("kms:GenerateDataKey", true),
        ("KMS:generatedatakeywithoutplaintext", true),
        ("kms:GenerateRandom", true),
        ("kms:describekey", true),
        ("kms:Decrypt", true),
        ("kms:Encrypt", false),
        ("kms:ReEncrypt", false),
        ("kms:Generat", false),
        ("s3:GenerateDataKey", false),
        ("", false),
    ] {
        assert_eq!(eval(&d, ALICE, a).allow_direct, want, "{a}");
    }
    let all = key(&doc(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}"#,
    ));
    assert!(
        eval(&all, ALICE, "s3:GetObject").allow_direct
            && eval(&all, ALICE, "kms:Decrypt").allow_direct
    );
    let kms = key(&doc(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}"#,
    ));
    assert!(!eval(&kms, ALICE, "s3:GetObject").allow_direct);
    assert!(!eval(&kms, ALICE, "kmsx:Decrypt").allow_direct);
}

#[test]
fn resources_match_case_sensitively_with_wildcards() {
    let id = identity(&doc(r#"{"Effect": "Allow", "Action": "kms:Decrypt",
        "Resource": ["arn:aws:kms:us-east-1:111122223333:key/*", "arn:aws:kms:*:444455556666:key/k?"]}"#));
    let c = ConditionMap::new();
    assert!(eval_in(&id, ALICE, "kms:Decrypt", KEY, &c).allow_direct);
    assert!(
        eval_in(
            &id,
            ALICE,
            "kms:Decrypt",
            "arn:aws:kms:eu-west-1:444455556666:key/k1",
            &c
        )
        .allow_direct
    );
    assert!(
        !eval_in(
            &id,
            ALICE,
            "kms:Decrypt",
            "arn:aws:kms:eu-west-1:444455556666:key/k12",
            &c
        )
        .allow_direct
    );
    assert!(!eval_in(&id, ALICE, "kms:Decrypt", &KEY.replace("key/", "KEY/"), &c).allow_direct);
    assert!(
        !eval_in(
            &id,
            ALICE,
            "kms:Decrypt",
            "arn:aws:kms:us-west-2:111122223333:key/x",
            &c
        )
        .allow_direct
    );
    assert!(
        !eval_in(&id, ALICE, "kms:Decrypt", "*", &c).allow_direct,
        "a key pattern is not *"
    );
}

#[test]
fn identity_policies_allow_directly_only() {
    let id = identity(
        r#"{"Version": "2012-10-17", "Statement": [
        {"Sid": "UseKeys", "Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "arn:aws:kms:*:111122223333:key/*"},
        {"Sid": "NoDelete", "Effect": "Deny", "Action": ["kms:ScheduleKeyDeletion", "kms:DisableKey"], "Resource": "*"}
    ]}"#,
    );
    assert_eq!(eval(&id, ALICE, "kms:Decrypt"), DIRECT);
    assert_eq!(
        eval(&id, "arn:aws:iam::444455556666:user/x", "kms:Decrypt"),
        DIRECT,
        "no principal to check"
    );
    assert_eq!(
        eval(&id, ALICE, "kms:ScheduleKeyDeletion"),
        Outcome {
            deny: true,
            ..NOTHING
        }
    );
    assert_eq!(eval(&id, ALICE, "kms:CreateKey"), NOTHING);
}

#[test]
fn encryption_context_condition_case_rules() {
    // A typical key policy statement: key name any case, value exact.
    let d = key(&doc(
        r#"{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/ExampleRole"},
        "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "backup"}}}"#,
    ));
    let with = |k: &str, v: &str| ConditionMap::new().with(k, &[v]);
    for (ctx, want) in [
        (with("kms:EncryptionContext:purpose", "backup"), true),
        (with("kms:encryptioncontext:PURPOSE", "backup"), true),
        (with("KMS:ENCRYPTIONCONTEXT:Purpose", "backup"), true),
        (with("kms:EncryptionContext:purpose", "Backup"), false),
        (with("kms:EncryptionContext:purposes", "backup"), false),
        (ConditionMap::new(), false),
    ] {
        assert_eq!(
            eval_in(&d, EXAMPLE_ROLE, "kms:Decrypt", KEY, &ctx).allow_direct,
            want,
            "{ctx:?}"
        );
    }
    // The Guide's "exact key case" recipe: kms:EncryptionContextKeys with StringEquals.
    let strict = key(&doc(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:GenerateDataKey", "Resource": "*",
        "Condition": {"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "AppName"},
                      "StringEquals": {"kms:EncryptionContext:AppName": "ExampleApp"}}}"#,
    ));
    let ctx = ConditionMap::new()
        .with("kms:EncryptionContextKeys", &["AppName"])
        .with("kms:EncryptionContext:appname", &["ExampleApp"]);
    assert!(eval_in(&strict, ALICE, "kms:GenerateDataKey", KEY, &ctx).allow_direct);
    let lower = ConditionMap::new()
        .with("kms:EncryptionContextKeys", &["appname"])
        .with("kms:EncryptionContext:appname", &["ExampleApp"]);
    assert!(!eval_in(&strict, ALICE, "kms:GenerateDataKey", KEY, &lower).allow_direct);
}

#[test]
fn for_all_values_allows_an_empty_context_unless_guarded() {
    // ForAllValues alone: no encryption context passes (AWS's documented pitfall).
    let loose = key(&doc(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Department", "Project"]}}}"#,
    ));
    let none = ConditionMap::new();
    assert!(eval_in(&loose, ALICE, "kms:Decrypt", KEY, &none).allow_direct);
    let extra = ConditionMap::new().with("kms:EncryptionContextKeys", &["Department", "Stage"]);
    assert!(!eval_in(&loose, ALICE, "kms:Decrypt", KEY, &extra).allow_direct);
    // With a required pair as well, the empty context fails.
    let guarded = key(&doc(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:Department": "IT"},
                      "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Department", "Project"]}}}"#,
    ));
    assert!(!eval_in(&guarded, ALICE, "kms:Decrypt", KEY, &none).allow_direct);
    let good = ConditionMap::new()
        .with("kms:EncryptionContextKeys", &["Department"])
        .with("kms:EncryptionContext:department", &["IT"]);
    assert!(eval_in(&guarded, ALICE, "kms:Decrypt", KEY, &good).allow_direct);
    // ForAnyValue needs a value.
    let any = key(&doc(
        r#"{"Effect": "Deny", "Principal": "*", "Action": "kms:CreateGrant", "Resource": "*",
        "Condition": {"ForAnyValue:StringEquals": {"kms:GrantOperations": ["Decrypt", "ReEncryptFrom"]}}}"#,
    ));
    assert!(!eval_in(&any, ALICE, "kms:CreateGrant", KEY, &none).deny);
    let ops = ConditionMap::new().with("kms:GrantOperations", &["Encrypt", "Decrypt"]);
    assert!(eval_in(&any, ALICE, "kms:CreateGrant", KEY, &ops).deny);
}

#[test]
fn conditions_with_absent_keys_in_deny_statements() {
    // The Guide's "only one encryption algorithm": Deny + StringNotEquals, key absent → denied.
    let d = key(&doc(
        r#"{"Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::111122223333:role/ExampleRole"},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*"], "Resource": "*",
        "Condition": {"StringNotEquals": {"kms:EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}}}"#,
    ));
    let c = |v: &str| ConditionMap::new().with("kms:EncryptionAlgorithm", &[v]);
    assert!(eval_in(&d, EXAMPLE_ROLE, "kms:Decrypt", KEY, &ConditionMap::new()).deny);
    assert!(eval_in(&d, EXAMPLE_ROLE, "kms:Decrypt", KEY, &c("RSAES_OAEP_SHA_1")).deny);
    assert!(
        !eval_in(
            &d,
            EXAMPLE_ROLE,
            "kms:Decrypt",
            KEY,
            &c("RSAES_OAEP_SHA_256")
        )
        .deny
    );
    assert!(!eval_in(&d, EXAMPLE_USER, "kms:Decrypt", KEY, &ConditionMap::new()).deny);
    // A negated IfExists operator in a Deny still denies when the key is missing (the IAM
    // guide's warning): IfExists makes the condition true.
    let d = key(&doc(
        r#"{"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
        "Condition": {"NotIpAddressIfExists": {"aws:SourceIp": ["203.0.113.0/24", "2001:db8::/32"]}}}"#,
    ));
    let ip = |v: &str| ConditionMap::new().with("aws:SourceIp", &[v]);
    assert!(eval_in(&d, ALICE, "kms:Decrypt", KEY, &ConditionMap::new()).deny);
    assert!(!eval_in(&d, ALICE, "kms:Decrypt", KEY, &ip("203.0.113.50")).deny);
    assert!(!eval_in(&d, ALICE, "kms:Decrypt", KEY, &ip("2001:db8:ffff::1")).deny);
    assert!(eval_in(&d, ALICE, "kms:Decrypt", KEY, &ip("198.51.100.1")).deny);
    assert!(eval_in(&d, ALICE, "kms:Decrypt", KEY, &ip("2001:db9::1")).deny);
    // Without IfExists a positive operator fails on a missing key, with it the key may be
    // missing but not wrong.
    for (op, absent, wrong, right) in [
        ("StringEquals", false, false, true),
        ("StringEqualsIfExists", true, false, true),
    ] {
        let d = key(&doc(&format!(
            r#"{{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",
                "Condition": {{"{op}": {{"kms:ViaService": "ec2.us-east-1.amazonaws.com"}}}}}}"#
        )));
        let via = |v: &str| ConditionMap::new().with("kms:ViaService", &[v]);
        assert_eq!(
            eval_in(&d, ALICE, "kms:Decrypt", KEY, &ConditionMap::new()).allow_direct,
            absent,
            "{op}"
        );
        assert_eq!(
            eval_in(
                &d,
                ALICE,
                "kms:Decrypt",
                KEY,
                &via("s3.us-east-1.amazonaws.com")
            )
            .allow_direct,
            wrong,
            "{op}"
        );
        assert_eq!(
            eval_in(
                &d,
                ALICE,
                "kms:Decrypt",
                KEY,
                &via("ec2.us-east-1.amazonaws.com")
            )
            .allow_direct,
            right,
            "{op}"
        );
    }
}

#[test]
fn caller_account_and_via_service_example() {
    // From the Guide (kms:CallerAccount): everyone in the account, through EBS only.
    let d = key(&doc(r#"{
      "Sid": "Allow access through EBS for all principals in the account that are authorized to use EBS",
      "Effect": "Allow",
      "Principal": {"AWS": "*"},
      "Condition": {"StringEquals": {"kms:CallerAccount": "111122223333", "kms:ViaService": "ec2.us-west-2.amazonaws.com"}},
      "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"],
      "Resource": "*"}"#));
    let ok = ConditionMap::new()
        .with("kms:CallerAccount", &["111122223333"])
        .with("kms:ViaService", &["ec2.us-west-2.amazonaws.com"]);
    assert_eq!(eval_in(&d, ALICE, "kms:Decrypt", KEY, &ok), DIRECT);
    let direct = ConditionMap::new().with("kms:CallerAccount", &["111122223333"]);
    assert_eq!(eval_in(&d, ALICE, "kms:Decrypt", KEY, &direct), NOTHING);
}

#[test]
fn date_numeric_and_null_in_documents() {
    let d = key(&doc(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",
        "Condition": {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"},
                      "DateGreaterThanEquals": {"aws:EpochTime": "1577836800"},
                      "NumericLessThanEquals": {"kms:ValidTo": "1900000000"},
                      "Null": {"kms:BypassPolicyLockoutSafetyCheck": "true"}}}"#,
    ));
    let base = || {
        ConditionMap::new()
            .with("aws:CurrentTime", &["2025-05-01T10:00:00Z"])
            .with("aws:EpochTime", &["1746093600"])
            .with("kms:ValidTo", &["1800000000"])
    };
    assert!(eval_in(&d, ALICE, "kms:ImportKeyMaterial", KEY, &base()).allow_direct);
    let late = base().with("aws:CurrentTime", &["2030-01-01T00:00:00Z"]);
    assert!(!eval_in(&d, ALICE, "kms:ImportKeyMaterial", KEY, &late).allow_direct);
    let early = base().with("aws:EpochTime", &["1577836799"]);
    assert!(!eval_in(&d, ALICE, "kms:ImportKeyMaterial", KEY, &early).allow_direct);
    let long = base().with("kms:ValidTo", &["1900000001"]);
    assert!(!eval_in(&d, ALICE, "kms:ImportKeyMaterial", KEY, &long).allow_direct);
    let bypass = base().with("kms:BypassPolicyLockoutSafetyCheck", &["false"]);
    assert!(!eval_in(&d, ALICE, "kms:ImportKeyMaterial", KEY, &bypass).allow_direct);
}

#[test]
fn principal_forms() {
    let d = key(&doc(r#"{"Effect": "Allow", "Principal": {"AWS": [
            "arn:aws:iam::111122223333:role/service-role/Builder",
            "arn:aws:sts::111122223333:assumed-role/Other/exact-session",
            "arn:aws:iam::111122223333:user/division/alice",
            "arn:aws-cn:iam::555555555555:root"],
         "Service": "logs.us-east-1.amazonaws.com",
         "Federated": "accounts.google.com"},
        "Action": "kms:Decrypt", "Resource": "*"}"#));
    for (p, want) in [
        (
            "arn:aws:iam::111122223333:role/service-role/Builder",
            DIRECT,
        ),
        ("arn:aws:sts::111122223333:assumed-role/Builder/s", DIRECT),
        ("arn:aws:sts::444455556666:assumed-role/Builder/s", NOTHING),
        ("arn:aws:iam::111122223333:role/Builder", NOTHING),
        (
            "arn:aws:sts::111122223333:assumed-role/Other/exact-session",
            DIRECT,
        ),
        (
            "arn:aws:sts::111122223333:assumed-role/Other/another-session",
            NOTHING,
        ),
        ("arn:aws:iam::111122223333:user/division/alice", DIRECT),
        ("arn:aws:iam::111122223333:user/alice", NOTHING),
        ("arn:aws-cn:iam::555555555555:user/x", ACCOUNT),
        ("arn:aws:iam::555555555555:user/x", NOTHING),
        ("logs.us-east-1.amazonaws.com", NOTHING),
        ("", NOTHING),
    ] {
        assert_eq!(eval(&d, p, "kms:Decrypt"), want, "{p}");
    }
    // The account given apart from the ARN is what account entries compare.
    let acct = key(&doc(
        r#"{"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:Decrypt", "Resource": "*"}"#,
    ));
    let o = acct.evaluate(&Request {
        principal_arn: "arn:aws:iam::111122223333:user/x",
        principal_account: "444455556666",
        action: "kms:Decrypt",
        resource: KEY,
        context: &ConditionMap::new(),
    });
    assert_eq!(o, NOTHING);
    assert_eq!(eval(&acct, ALICE, "kms:Decrypt"), ACCOUNT);
    let star = key(&doc(
        r#"{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"}"#,
    ));
    assert_eq!(
        eval(
            &star,
            "arn:aws:iam::999999999999:user/anyone",
            "kms:Decrypt"
        ),
        DIRECT
    );
}

#[test]
fn key_policy_statement_without_resource_has_no_effect() {
    let d = key(r#"{"Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:*"}
    ]}"#);
    assert_eq!(eval(&d, ALICE, "kms:Decrypt"), NOTHING);
}

#[test]
fn document_shapes_that_parse() {
    // Statement as one object, no Version, the old Version, an Id; Sids with spaces in key
    // policies; duplicate Sids in key policies.
    for text in [
        r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}}"#,
        r#"{"Version": "2008-10-17", "Id": "x", "Statement": []}"#,
        r#"{"Statement": [{"Sid": "a b", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
                          {"Sid": "a b", "Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}"#,
        "{\"Statement\": [{\"Sid\": \"café\", \"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:*\"}]}",
    ] {
        key(text);
    }
    let d = key(
        r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}}"#,
    );
    assert_eq!(eval(&d, ALICE, "kms:Decrypt"), DIRECT);
    // Text is kept byte for byte.
    let odd = "  {\"Statement\":[] }\n";
    assert_eq!(key(odd).text(), odd);
    // Exactly the maximum size parses.
    let base = r#"{"Statement": []}"#;
    let full = format!(
        "{base}{}",
        " ".repeat(PolicyDocument::MAX_BYTES - base.len())
    );
    assert_eq!(full.len(), PolicyDocument::MAX_BYTES);
    key(&full);
}

/// A document of `n` of the smallest statements.
fn many_statements(n: usize) -> String {
    let one = r#"{"Effect":"Deny","Principal":"*","Action":"*"}"#;
    let text = format!("{{\"Statement\":[{}]}}", vec![one; n].join(","));
    assert!(
        text.len() <= PolicyDocument::MAX_BYTES,
        "{n} statements must fit"
    );
    text
}

fn refused(text: &str, kind: PolicyKind) -> String {
    match PolicyDocument::parse(text, kind) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => {
            assert_eq!(e.message(), e.to_string());
            e.to_string()
        }
    }
}

#[test]
fn malformed_documents_are_refused_with_aws_reasons() {
    let allow = r#""Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*""#;
    let cases: Vec<(String, PolicyKind, &str)> = vec![
        ("not json".into(), PolicyKind::Key, "not in valid JSON format"),
        ("".into(), PolicyKind::Key, "not in valid JSON format"),
        ("[]".into(), PolicyKind::Key, "must be a JSON object, not an array"),
        (r#"{"Version": "2012-10-17"}"#.into(), PolicyKind::Key, "Missing required field Statement"),
        (r#"{"Version": "2012-10-18", "Statement": []}"#.into(), PolicyKind::Key, "invalid Version \"2012-10-18\""),
        (r#"{"Version": 2012, "Statement": []}"#.into(), PolicyKind::Key, "invalid Version 2012"),
        (r#"{"Id": 1, "Statement": []}"#.into(), PolicyKind::Key, "Id must be a string"),
        (r#"{"Statement": [], "Extra": 1}"#.into(), PolicyKind::Key, "unsupported element: Extra"),
        (r#"{"Statement": "x"}"#.into(), PolicyKind::Key, "Statement element must be an object or an array"),
        (r#"{"Statement": ["x"]}"#.into(), PolicyKind::Key, "Each policy statement must be a JSON object"),
        (format!(r#"{{"Statement": [{{{allow}, "Foo": 1}}]}}"#), PolicyKind::Key, "unsupported element: Foo"),
        (format!(r#"{{"Statement": [{{{allow}, "effect": "Deny"}}]}}"#), PolicyKind::Key, "unsupported element: effect"),
        (format!(r#"{{"Statement": [{{{allow}, "Effect": "Deny"}}]}}"#), PolicyKind::Key, "\"Effect\" more than once"),
        (r#"{"Statement": [{"Principal": "*", "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Key, "Missing required field Effect"),
        (r#"{"Statement": [{"Effect": "allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Key, "Invalid effect: \"allow\""),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Resource": "*"}]}"#.into(), PolicyKind::Key, "Policy statement must contain actions."),
        (r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Key, "Missing required field Principal"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Identity, "should not specify a principal"),
        (r#"{"Statement": [{"Effect": "Allow", "NotPrincipal": {"AWS": "111122223333"}, "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Identity, "should not specify a principal"),
        (r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*"}]}"#.into(), PolicyKind::Identity, "Policy statement must contain resources."),
        (format!(r#"{{"Statement": [{{{allow}, "NotPrincipal": "*"}}]}}"#), PolicyKind::Key, "Principal or NotPrincipal, not both"),
        (format!(r#"{{"Statement": [{{{allow}, "NotAction": "kms:Decrypt"}}]}}"#), PolicyKind::Key, "Action or NotAction, not both"),
        (format!(r#"{{"Statement": [{{{allow}, "NotResource": "*"}}]}}"#), PolicyKind::Key, "Resource or NotResource, not both"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "Decrypt", "Resource": "*"}]}"#.into(), PolicyKind::Key, "must be prefaced by a vendor"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:a:b", "Resource": "*"}]}"#.into(), PolicyKind::Key, "only one colon"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:", "Resource": "*"}]}"#.into(), PolicyKind::Key, "invalid action: \"kms:\""),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Dec rypt", "Resource": "*"}]}"#.into(), PolicyKind::Key, "invalid action"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": [], "Resource": "*"}]}"#.into(), PolicyKind::Key, "Action element must be a string or a non-empty array"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": {"a": 1}, "Resource": "*"}]}"#.into(), PolicyKind::Key, "not an object"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["kms:*", 3], "Resource": "*"}]}"#.into(), PolicyKind::Key, "Action element must be a string"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "key/1"}]}"#.into(), PolicyKind::Key, "Resource key/1 must be in ARN format or \"*\"."),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": 7}]}"#.into(), PolicyKind::Key, "Resource element must be a string"),
        (r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*", "NotResource": []}]}"#.into(), PolicyKind::Identity, "NotResource element must be"),
        (r#"{"Statement": [{"Sid": 5, "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Key, "Sid must be a string"),
        (r#"{"Statement": [{"Sid": "a b", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Identity, "must be alpha-numeric"),
        (r#"{"Statement": [{"Sid": "A", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}, {"Sid": "A", "Effect": "Deny", "Action": "kms:*", "Resource": "*"}]}"#.into(), PolicyKind::Identity, "must be unique"),
        (format!(r#"{{"Statement": [{{{allow}, "Condition": {{"StringEqualsX": {{"a:b": "c"}}}}}}]}}"#), PolicyKind::Key, "Invalid Condition type : StringEqualsX"),
        (format!(r#"{{"Statement": [{{{allow}, "Condition": {{"DateEquals": {{"aws:CurrentTime": "tomorrow"}}}}}}]}}"#), PolicyKind::Key, "is not a date"),
        (format!(r#"{{"Statement": [{{{allow}, "Condition": {{"IpAddress": {{"aws:SourceIp": "1.2.3.4/40"}}}}}}]}}"#), PolicyKind::Key, "is not an IP address"),
        (format!(r#"{{"Statement": [{{{allow}, "Condition": "x"}}]}}"#), PolicyKind::Key, "Condition element must be an object"),
        (format!("{{\"Statement\": [{{{allow}, \"Sid\": \"\u{2603}\"}}]}}"), PolicyKind::Key, "character that is not allowed: U+2603"),
        (format!("{{\"Statement\": [{{{allow}, \"Sid\": \"\u{7}\"}}]}}"), PolicyKind::Key, "U+0007"),
        (many_statements(parse::MAX_STATEMENTS + 1), PolicyKind::Key, "513 statements; at most 512 are allowed"),
        (format!("{}{}", "[".repeat(9), "]".repeat(9)), PolicyKind::Key, "nested too deeply"),
        (
            format!(r#"{{"Statement": [{{{allow}, "Condition": {{"StringEquals": {{"a:b": [[[[["x"]]]]]}}}}}}]}}"#),
            PolicyKind::Key,
            "nested too deeply",
        ),
        (format!("{{\"Statement\": []}}{}", " ".repeat(PolicyDocument::MAX_BYTES)), PolicyKind::Key, "exceeds the maximum size of 32768 bytes"),
        (format!("{{\"Statement\": []}}{}", " ".repeat(PolicyDocument::MAX_BYTES)), PolicyKind::Identity, "exceeds the maximum size"),
    ];
    for (text, kind, says) in &cases {
        let e = refused(text, *kind);
        assert!(
            e.contains(says),
            "{kind:?} {}: {e}",
            &text[..text.len().min(200)]
        );
    }
    // The most statements parse.
    key(&many_statements(parse::MAX_STATEMENTS));
    // A non-Latin-1 character is fine in an identity policy.
    identity("{\"Statement\": [{\"Sid\": \"x\", \"Effect\": \"Allow\", \"Action\": \"kms:*\", \"Resource\": \"arn:aws:kms:*:*:key/\u{2603}\"}]}");
}

#[test]
fn invalid_principals_are_refused() {
    for p in [
        r#""arn:aws:iam::111122223333:root""#,
        r#""alice""#,
        r#"{}"#,
        r#"{"AWS": []}"#,
        r#"{"AWS": ""}"#,
        r#"{"AWS": "12345"}"#,
        r#"{"AWS": "arn:aws:iam::111122223333:user/*"}"#,
        r#"{"AWS": "arn:aws:iam::*:root"}"#,
        r#"{"AWS": "arn:aws:iam::111122223333:group/admins"}"#,
        r#"{"AWS": "arn:aws:iam::111122223333:user/"}"#,
        r#"{"AWS": "arn:aws:iam::111122223333:role"}"#,
        r#"{"AWS": "arn:aws:iam:us-east-1:111122223333:user/a"}"#,
        r#"{"AWS": "arn:aws:kms:us-east-1:111122223333:key/a"}"#,
        r#"{"AWS": "arn:aws:sts::111122223333:assumed-role/OnlyRole"}"#,
        r#"{"AWS": "arn:azure:iam::111122223333:user/a"}"#,
        r#"{"AWS": "arn:aws:iam::11112222333x:user/a"}"#,
        r#"{"AWS": {"nested": 1}}"#,
        r#"{"Users": "alice"}"#,
        r#"{"Service": ""}"#,
        r#"7"#,
    ] {
        let text = doc(&format!(
            r#"{{"Effect": "Allow", "Principal": {p}, "Action": "kms:*", "Resource": "*"}}"#
        ));
        let e = refused(&text, PolicyKind::Key);
        assert_eq!(
            e, "Policy contains a statement with one or more invalid principals.",
            "{p}"
        );
    }
}

#[test]
fn documents_are_shareable() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    send_sync::<PolicyDocument>();
    let d = PolicyDocument::default_key_policy(ACCT);
    let c = d.clone();
    assert!(
        std::ptr::eq(d.text(), c.text()),
        "a clone shares the compiled document"
    );
    let shown = format!("{d:?}");
    assert!(
        shown.contains("Key") && shown.contains("statements: 1"),
        "{shown}"
    );
    let h = std::thread::spawn(move || eval(&c, ALICE, "kms:Decrypt"));
    assert_eq!(h.join().ok(), Some(ACCOUNT));
    let r = Request {
        principal_arn: ALICE,
        principal_account: ACCT,
        action: "kms:Decrypt",
        resource: KEY,
        context: &ConditionMap::new(),
    };
    assert!(format!("{r:?}").contains("kms:Decrypt"));
}

/// A context that only implements `values`, to check the provided `for_each_value`.
struct OnlyValues(Vec<(String, Vec<String>)>);

impl ConditionContext for OnlyValues {
    fn values(&self, key: &str) -> Option<Vec<Cow<'_, str>>> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, vs)| vs.iter().map(|v| Cow::Borrowed(v.as_str())).collect())
    }
}

#[test]
fn contexts_implementing_only_values_work() {
    let d = key(&doc(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:Purpose": "backup"},
                      "ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["purpose", "tenant-*"]}}}"#,
    ));
    let ctx = OnlyValues(vec![
        (
            "kms:encryptioncontext:purpose".into(),
            vec!["backup".into()],
        ),
        (
            "kms:encryptioncontextkeys".into(),
            vec!["purpose".into(), "tenant-7".into()],
        ),
    ]);
    fn r(c: &dyn ConditionContext) -> Request<'_> {
        Request {
            principal_arn: ALICE,
            principal_account: ACCT,
            action: "kms:Decrypt",
            resource: KEY,
            context: c,
        }
    }
    assert!(d.evaluate(&r(&ctx)).allow_direct);
    let bad = OnlyValues(vec![
        (
            "kms:encryptioncontext:purpose".into(),
            vec!["backup".into()],
        ),
        (
            "kms:encryptioncontextkeys".into(),
            vec!["purpose".into(), "other".into()],
        ),
    ]);
    assert!(!d.evaluate(&r(&bad)).allow_direct);
    // The ConditionMap answers both methods, for any spelling of the key.
    let m = ConditionMap::new().with("Kms:EncryptionContextKeys", &["A", "B"]);
    let vs: Vec<String> = m
        .values("KMS:ENCRYPTIONCONTEXTKEYS")
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(vs, ["A", "B"]);
    assert!(m.values("kms:encryptioncontext:a").is_none());
    let mut seen = Vec::new();
    assert!(m.for_each_value("kms:encryptioncontextkeys", &mut |v| {
        seen.push(v.to_string());
        false
    }));
    assert_eq!(seen, ["A"], "stops when told");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// A policy using every operator family, for throwing odd requests at.
    fn everything() -> PolicyDocument {
        key(r#"{"Statement": [
          {"Effect": "Allow", "Principal": {"AWS": ["*", "arn:aws:iam::111122223333:role/r"]}, "Action": ["kms:*", "*"], "Resource": ["*", "arn:*:kms:*:*:key/?*"],
           "Condition": {
             "StringLike": {"a:s": ["*x*?", "é*"]}, "StringNotEqualsIgnoreCase": {"a:s": "Ä"},
             "NumericLessThanIfExists": {"a:n": "1.5"}, "DateGreaterThanIfExists": {"a:d": "2020-01-01T00:00:00+01:00"},
             "BoolIfExists": {"a:b": true}, "BinaryEqualsIfExists": {"a:x": "AAEC"},
             "IpAddressIfExists": {"a:ip": ["10.0.0.0/8", "::/0"]}, "ArnLikeIfExists": {"a:arn": "arn:aws:*:*:*:*"},
             "ForAllValues:StringEquals": {"a:m": ["p", "q"]}, "ForAnyValue:StringNotLike": {"a:m2": "*"},
             "Null": {"a:none": true}}},
          {"Effect": "Deny", "NotPrincipal": {"AWS": "111122223333"}, "NotAction": "kms:Decrypt", "NotResource": "arn:aws:kms:*:*:key/k"}
        ]}"#)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn evaluate_never_panics(
            principal in ".{0,40}",
            account in "[0-9]{0,12}",
            action in ".{0,20}",
            resource in ".{0,40}",
            values in proptest::collection::vec(".{0,12}", 0..4),
        ) {
            let d = everything();
            let mut ctx = ConditionMap::new();
            for k in ["a:s", "a:n", "a:d", "a:b", "a:x", "a:ip", "a:arn", "a:m", "a:m2"] {
                ctx.set(k, values.clone());
            }
            let o = d.evaluate(&Request { principal_arn: &principal, principal_account: &account, action: &action, resource: &resource, context: &ctx });
            prop_assert!(!o.allows_directly() || o.allow_direct);
        }

        #[test]
        fn parse_never_panics(text in ".{0,200}") {
            let _ = PolicyDocument::parse(&text, PolicyKind::Key);
            let _ = PolicyDocument::parse(&text, PolicyKind::Identity);
        }

        #[test]
        fn parse_never_panics_on_policy_like_text(
            parts in proptest::collection::vec(prop_oneof![
                Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"),
                Just("\"Statement\""), Just("\"Effect\""), Just("\"Allow\""), Just("\"Principal\""),
                Just("\"*\""), Just("\"Action\""), Just("\"kms:*\""), Just("\"Condition\""),
                Just("\"StringLike\""), Just("\"a:b\""), Just("\"Resource\""), Just("1"), Just("true"),
            ], 0..60)
        ) {
            let text: String = parts.concat();
            let _ = PolicyDocument::parse(&text, PolicyKind::Key);
        }
    }
}

/// Micro-timing (release: `cargo test --release --lib policy::tests::timing -- --ignored
/// --nocapture`): a typical four-statement key policy with an encryption-context condition.
#[test]
#[ignore]
fn timing_of_a_typical_key_policy() {
    let text = CONSOLE_POLICY.replace(
        r#""Action": [
        "kms:Encrypt","#,
        r#""Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "backup"}},
      "Action": [
        "kms:Encrypt","#,
    );
    assert_ne!(text, CONSOLE_POLICY);
    let d = key(&text);
    let ctx = ConditionMap::new().with("kms:EncryptionContext:purpose", &["backup"]);
    let req = Request {
        principal_arn: "arn:aws:sts::111122223333:assumed-role/ExampleRole/s",
        principal_account: ACCT,
        action: "kms:Decrypt",
        resource: KEY,
        context: &ctx,
    };
    assert!(d.evaluate(&req).allows_directly());
    let n = 200_000;
    let t = std::time::Instant::now();
    let mut hits = 0usize;
    for _ in 0..n {
        hits += usize::from(
            std::hint::black_box(&d)
                .evaluate(std::hint::black_box(&req))
                .allow_direct,
        );
    }
    let per = t.elapsed() / n;
    assert_eq!(hits, n as usize);
    println!("evaluate: {per:?} per request");
}
