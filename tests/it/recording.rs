//! Recorded calls and call time limits, in all four dialects. A session that records its calls
//! gets a dial that asks the provider to record (dual or mono) and report to a signed hook;
//! a time limit appears in the dial; a session with neither gets today's document, byte for
//! byte. The provider's report, signed as the provider signs it by the stand-ins of
//! `relay_*`, reaches the interaction and the app's `recording.completed` event once; a bad
//! signature or a forged reference is refused; erasing a participant drops the URL. Redis and
//! the logs are scanned for the participants' digits, and Redis for the recording URL, which
//! is stored sealed only.

use std::time::Duration;

use hush::config::{Config, Secret};
use serde_json::{Value, json};

use crate::harness::*;
use crate::receiver::Receiver;
use crate::relay_vonage as vonage;
use crate::{relay_plivo as plivo, relay_telnyx as telnyx, relay_twilio as twilio};

const PUBLIC: &str = "https://hush.example.test";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provider {
    Twilio,
    Telnyx,
    Plivo,
    Vonage,
}

/// What a connected call's answer asks of the provider.
#[derive(Debug, Default, PartialEq, Eq)]
struct Dial {
    /// `dual` or `mono`, however the provider spells it; `None` when the call is not recorded.
    record: Option<&'static str>,
    /// The recording hook as path and query (the public URL taken off).
    callback: Option<String>,
    time_limit: Option<u64>,
}

/// One recording as the provider reports it.
struct Report<'a> {
    /// The inbound call's id at the provider.
    call: &'a str,
    url: &'a str,
    id: &'a str,
    duration_secs: u32,
    channels: u8,
}

fn path_of(url: &str) -> String {
    url.strip_prefix(PUBLIC)
        .unwrap_or_else(|| panic!("{url} is not under {PUBLIC}"))
        .to_string()
}

fn xml_root(r: &Resp, content_type: &str) -> twilio::El {
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type().starts_with(content_type),
        "content type {:?}: {}",
        r.content_type(),
        r.text
    );
    let mut doc = r.text.trim();
    if doc.starts_with("<?xml") {
        doc = doc[doc.find("?>").unwrap() + 2..].trim_start();
    }
    let (root, rest) = twilio::element(doc);
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert_eq!(root.name, "Response", "{}", r.text);
    root
}

/// TwiML and TeXML: the `<Dial>` carries it all.
fn twiml_dial(root: &twilio::El) -> Dial {
    let dial = root.child("Dial");
    let record = dial.attr("record").map(|r| match r {
        "record-from-answer-dual" => "dual",
        "record-from-answer" => "mono",
        other => panic!("record={other}"),
    });
    if record.is_some() {
        assert_eq!(dial.attr("recordingStatusCallbackEvent"), Some("completed"));
    }
    Dial {
        record,
        callback: dial.attr("recordingStatusCallback").map(path_of),
        time_limit: dial.attr("timeLimit").map(|t| t.parse().unwrap()),
    }
}

impl Provider {
    fn configure(self, c: &mut Config) {
        c.callback_allow_private = true;
        c.public_url = Some(PUBLIC.into());
        let p = &mut c.providers;
        match self {
            Provider::Twilio => p.twilio_auth_token = Some(Secret::new(twilio::TOKEN.into())),
            Provider::Telnyx => {
                p.telnyx_public_key = Some(Secret::new(telnyx::public_key(&telnyx::signing_key())))
            }
            Provider::Plivo => p.plivo_auth_token = Some(Secret::new(plivo::TOKEN.into())),
            Provider::Vonage => {
                p.vonage_signature_secret = Some(Secret::new(vonage::SIGNATURE_SECRET.into()))
            }
        }
    }

    fn call_id(self) -> String {
        match self {
            Provider::Twilio => twilio::sid("CA"),
            Provider::Telnyx => format!("v3:{}", twilio::sid("")),
            Provider::Plivo => plivo::uuid(),
            Provider::Vonage => vonage::uuid(),
        }
    }

    /// The provider's webhook for a call from `from` to `to`.
    async fn call(self, app: &TestApp, call: &str, from: &str, to: &str) -> Resp {
        match self {
            Provider::Twilio => twilio::Twilio { app }.call(from, to, call).await,
            Provider::Telnyx => telnyx::Hook::new(app).call(call, from, to).await,
            Provider::Plivo => plivo::Plivo::new(app).call(call, from, to).await,
            Provider::Vonage => vonage::answer_post(app, from, to, call).await,
        }
    }

    /// The answer to a connected call, read as the provider reads it.
    fn dial(self, r: &Resp) -> Dial {
        match self {
            Provider::Twilio => twiml_dial(&xml_root(r, "text/xml")),
            Provider::Telnyx => twiml_dial(&xml_root(r, "application/xml")),
            Provider::Plivo => {
                let root = xml_root(r, "text/xml");
                let names = root.names();
                let dial = root.child("Dial");
                let record = names.contains(&"Record").then(|| {
                    assert_eq!(names, ["Record", "Dial"], "records before it dials");
                    root.child("Record")
                });
                if let Some(rec) = record {
                    assert_eq!(rec.attr("startOnDialAnswer"), Some("true"));
                    assert_eq!(rec.attr("redirect"), Some("false"));
                    assert_eq!(rec.attr("callbackMethod"), Some("POST"));
                    let max: u64 = rec.attr("maxLength").unwrap().parse().unwrap();
                    let limit = dial.attr("timeLimit").map(|t| t.parse().unwrap());
                    assert_eq!(max, limit.unwrap_or(14_400), "records the whole call");
                }
                Dial {
                    record: record.map(|rec| match rec.attr("recordChannelType") {
                        Some("stereo") => "dual",
                        Some("mono") => "mono",
                        other => panic!("recordChannelType={other:?}"),
                    }),
                    callback: record.and_then(|rec| rec.attr("callbackUrl")).map(path_of),
                    time_limit: dial.attr("timeLimit").map(|t| t.parse().unwrap()),
                }
            }
            Provider::Vonage => {
                let ncco = r.expect(200);
                let actions = ncco.as_array().expect("an NCCO array");
                let connect = actions.last().expect("a connect action");
                assert_eq!(connect["action"], "connect", "{ncco}");
                let record = (actions.len() == 2).then(|| &actions[0]);
                if let Some(rec) = record {
                    assert_eq!(rec["action"], "record", "{ncco}");
                    assert_eq!(rec["eventMethod"], "POST");
                }
                Dial {
                    record: record.map(|rec| {
                        match (rec["split"].as_str(), rec["channels"].as_u64()) {
                            (Some("conversation"), Some(2)) => "dual",
                            (None, None) => "mono",
                            other => panic!("a record action of {other:?}"),
                        }
                    }),
                    callback: record.map(|rec| path_of(rec["eventUrl"][0].as_str().unwrap())),
                    time_limit: connect["limit"].as_u64(),
                }
            }
        }
    }

    /// Today's answer to a call that is neither recorded nor limited, exactly.
    fn assert_plain(self, r: &Resp, proxy: &str, other: &str) {
        let d = |n: &str| n.trim_start_matches('+').to_string();
        match self {
            Provider::Twilio => assert_eq!(
                r.text,
                format!(
                    "<Response><Dial callerId=\"{proxy}\" answerOnBridge=\"true\"><Number \
                     statusCallback=\"{PUBLIC}/hooks/twilio/status\">{other}</Number></Dial>\
                     </Response>"
                )
            ),
            Provider::Telnyx => assert_eq!(
                r.text,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial \
                     callerId=\"{proxy}\"><Number>{other}</Number></Dial></Response>"
                )
            ),
            Provider::Plivo => assert_eq!(
                r.text,
                format!(
                    "<Response><Dial callerId=\"{}\"><Number>{}</Number></Dial></Response>",
                    d(proxy),
                    d(other)
                )
            ),
            Provider::Vonage => assert_eq!(
                r.expect(200),
                json!([{
                    "action": "connect",
                    "from": d(proxy),
                    "endpoint": [{ "type": "phone", "number": d(other) }],
                }])
            ),
        }
    }

    /// The provider's recording report to `hook` (path and query), signed as it signs.
    async fn report(self, app: &TestApp, hook: &str, rep: &Report<'_>) -> Resp {
        let (duration, channels) = (rep.duration_secs.to_string(), rep.channels.to_string());
        match self {
            Provider::Twilio => {
                twilio::Twilio { app }
                    .post(hook, &twilio_report(rep, &duration, &channels))
                    .await
            }
            Provider::Telnyx => {
                telnyx::Hook::new(app)
                    .post(hook, "application/json", &telnyx_report(rep).to_string())
                    .await
            }
            Provider::Plivo => {
                plivo::Plivo::new(app)
                    .post(hook, &plivo_report(rep, &duration))
                    .await
            }
            Provider::Vonage => {
                let body = vonage_report(rep).to_string();
                let token = vonage::token_for_body(body.as_bytes());
                vonage_post(app, hook, &body, &token).await
            }
        }
    }

    /// The same report with a signature the provider did not make.
    async fn report_forged(self, app: &TestApp, hook: &str, rep: &Report<'_>) -> Resp {
        let (duration, channels) = (rep.duration_secs.to_string(), rep.channels.to_string());
        match self {
            Provider::Twilio => {
                let params = twilio_report(rep, &duration, &channels);
                app.send(
                    app.client
                        .post(app.url(hook))
                        .header("x-twilio-signature", "bm90IGEgc2lnbmF0dXJl")
                        .form(&params),
                )
                .await
            }
            Provider::Telnyx => {
                let ts = (now_ms() / 1000).to_string();
                let signature = "bm90IGEgc2lnbmF0dXJl".to_string();
                telnyx::Hook::new(app)
                    .raw(
                        hook,
                        "application/json",
                        &telnyx_report(rep).to_string(),
                        Some((ts, signature)),
                    )
                    .await
            }
            Provider::Plivo => {
                plivo::Plivo::new(app)
                    .send(
                        hook,
                        &plivo_report(rep, &duration),
                        plivo::Sign::Token("bm90IHRoZSB0b2tlbg"),
                    )
                    .await
            }
            Provider::Vonage => {
                let body = vonage_report(rep).to_string();
                vonage_post(app, hook, &body, "not.a.token").await
            }
        }
    }
}

/// `RecordingStatusCallback` parameters (<https://www.twilio.com/docs/voice/twiml/dial>).
fn twilio_report<'a>(
    rep: &'a Report<'a>,
    duration: &'a str,
    channels: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("CallSid", rep.call),
        ("RecordingSid", rep.id),
        ("RecordingUrl", rep.url),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", duration),
        ("RecordingChannels", channels),
        ("RecordingSource", "DialVerb"),
        ("RecordingStartTime", "Wed, 02 Dec 2026 15:00:00 +0000"),
    ]
}

/// TeXML's `recording completed` callback, as JSON.
fn telnyx_report(rep: &Report<'_>) -> Value {
    json!({
        "AccountSid": "cb6cfbbc-eb00-41af-a3f3-0d7b32009e4b",
        "CallSid": rep.call,
        "CallSidLegacy": rep.call,
        "ConnectionSid": "1234567890",
        "RecordingChannels": rep.channels,
        "RecordingDuration": rep.duration_secs.to_string(),
        "RecordingSid": rep.id,
        "RecordingSource": "DialVerb",
        "RecordingStatus": "completed",
        "RecordingUrl": rep.url,
    })
}

/// `<Record callbackUrl>` parameters.
fn plivo_report<'a>(rep: &'a Report<'a>, duration: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CallUUID", rep.call),
        ("RecordUrl", rep.url),
        ("RecordingID", rep.id),
        ("RecordingDuration", duration),
        ("RecordingDurationMs", "0"),
        ("RecordingStartMs", "1796223600000"),
        ("RecordingEndMs", "1796223600000"),
    ]
}

/// The `record` action's event
/// (<https://developer.vonage.com/en/voice/voice-api/webhook-reference#recording>).
fn vonage_report(rep: &Report<'_>) -> Value {
    let start = 1_796_223_600;
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    json!({
        "start_time": at(start),
        "end_time": at(start + rep.duration_secs as i64),
        "recording_url": rep.url,
        "recording_uuid": rep.id,
        "size": 12345,
        "conversation_uuid": format!("CON-{}", rep.call),
        "timestamp": at(start + rep.duration_secs as i64),
    })
}

async fn vonage_post(app: &TestApp, hook: &str, body: &str, token: &str) -> Resp {
    app.send(
        app.client
            .post(app.url(hook))
            .header("content-type", "application/json")
            .bearer_auth(token)
            .body(body.to_string()),
    )
    .await
}

/// A session on pool `rec` with these options in its create body: `(id, proxy)`.
async fn session(app: &TestApp, a: &str, b: &str, options: Value) -> (String, String) {
    let mut body = json!({
        "pool": "rec",
        "participants": [{ "number": a }, { "number": b }],
    });
    for (k, v) in options.as_object().unwrap() {
        body[k] = v.clone();
    }
    let s = app.create_session_with(&body).await.expect(201);
    (
        s["id"].as_str().unwrap().to_string(),
        s["proxy_number"].as_str().unwrap().to_string(),
    )
}

#[track_caller]
fn assert_free_of(what: &str, hay: &[u8], needles: &[String]) {
    for n in needles {
        assert!(
            !contains_bytes(hay, n.as_bytes()),
            "{what} contains {n}: {}",
            String::from_utf8_lossy(hay)
        );
    }
}

/// Neither Redis nor the logs hold any of these participants' digits.
async fn assert_no_digits(app: &TestApp, people: &[&str]) {
    let numbers: Vec<String> = people
        .iter()
        .flat_map(|n| [n.to_string(), national_digits(n)])
        .collect();
    for (key, values) in app.dump().await {
        assert_free_of(&format!("Redis key {key}"), key.as_bytes(), &numbers);
        for v in values {
            assert_free_of(&format!("a value of {key}"), &v, &numbers);
        }
    }
    assert_free_of("the logs", captured_logs().as_bytes(), &numbers);
}

/// The whole story for one provider; `first` is the first of the 6 participants it uses.
async fn recorded_calls(p: Provider, first: usize) {
    let app = TestApp::start_with(|c| p.configure(c)).await;
    let receiver = Receiver::start().await;
    app.pool(
        "rec",
        json!({ "callback_url": receiver.url("/events"), "cooloff_secs": 600 }),
        &proxies(2),
    )
    .await;
    receiver.set_secrets(vec![app.callback_secret("rec").await]);
    let people: Vec<String> = (first..first + 6).map(participant).collect();
    let numbers: Vec<String> = people
        .iter()
        .flat_map(|n| [n.clone(), national_digits(n)])
        .collect();
    let (a, b) = (&people[0], &people[1]);

    // Dual, with a time limit.
    let (dual, proxy) = session(
        &app,
        a,
        b,
        json!({ "record": true, "record_channels": "dual", "max_call_secs": 600 }),
    )
    .await;
    let call = p.call_id();
    let answer = p.call(&app, &call, a, &proxy).await;
    let dialled = p.dial(&answer);
    assert_eq!(dialled.record, Some("dual"), "{}", answer.text);
    assert_eq!(dialled.time_limit, Some(600), "{}", answer.text);
    let hook = dialled.callback.expect("a recording hook");
    assert!(
        hook.starts_with(&format!(
            "/hooks/{}/recording?",
            format!("{p:?}").to_lowercase()
        )),
        "{hook}"
    );
    assert!(!contains_bytes(
        hook.as_bytes(),
        national_digits(b).as_bytes()
    ));
    // A retried call webhook gets the same answer, with the same hook.
    let again = p.call(&app, &call, a, &proxy).await;
    assert_eq!(p.dial(&again).callback.as_deref(), Some(hook.as_str()));

    // Mono, without a limit.
    let (mono, proxy_m) = session(
        &app,
        &people[2],
        &people[3],
        json!({ "record": true, "record_channels": "mono" }),
    )
    .await;
    let call_m = p.call_id();
    let dialled_m = p.dial(&p.call(&app, &call_m, &people[2], &proxy_m).await);
    assert_eq!(dialled_m.record, Some("mono"));
    assert_eq!(dialled_m.time_limit, None);
    let hook_m = dialled_m.callback.expect("a recording hook");

    // Neither: today's document exactly. A limit alone: no recording.
    let (_, proxy_p) = session(&app, &people[4], &people[5], json!({})).await;
    let plain = p.call(&app, &p.call_id(), &people[4], &proxy_p).await;
    p.assert_plain(&plain, &proxy_p, &people[5]);
    let (_, proxy_l) = session(&app, &people[5], &people[4], json!({ "max_call_secs": 90 })).await;
    let limited = p.dial(&p.call(&app, &p.call_id(), &people[5], &proxy_l).await);
    assert_eq!(limited.record, None);
    assert_eq!(limited.callback, None);
    assert_eq!(limited.time_limit, Some(90));

    // The report reaches the interaction and the app, once.
    let tag = format!("{:016x}", rand::random::<u64>());
    let url = format!("https://recordings.provider.test/{tag}.mp3");
    let rec_id = format!("RE{tag}");
    let rep = Report {
        call: &call,
        url: &url,
        id: &rec_id,
        duration_secs: 42,
        channels: 2,
    };
    let r = p.report(&app, &hook, &rep).await;
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text);
    let found = app.interactions(&dual).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let recording = &found[0]["recording"];
    assert_eq!(recording["url"], url.as_str(), "{found:?}");
    assert_eq!(recording["channels"], 2);
    assert_eq!(recording["duration_secs"], 42);
    assert_eq!(recording["provider_recording_id"], rec_id.as_str());
    let events = receiver.wait_for_type("recording.completed", 1, WAIT).await;
    let event = &events[0];
    assert!(event.verified(), "signed with the pool's secret");
    let data = event.data();
    assert_eq!(data["session_id"], dual.as_str());
    assert_eq!(data["interaction_id"], found[0]["id"]);
    assert_eq!(data["proxy_number"], proxy.as_str());
    assert_eq!(data["provider"], format!("{p:?}").to_lowercase());
    assert_eq!(data["recording"]["url"], url.as_str());
    assert_eq!(data["recording"]["channels"], 2);
    assert_eq!(data["recording"]["provider_recording_id"], rec_id.as_str());
    assert_free_of("the event", &event.raw, &numbers);

    // A retried report records nothing more and tells the app nothing more.
    let r = p.report(&app, &hook, &rep).await;
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text);
    let listed = app.get("/v1/events?pool=rec").await.expect(200);
    let completed = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "recording.completed")
        .count();
    assert_eq!(completed, 1, "{listed}");

    // Forged: a signature the provider did not make, or a reference hush did not.
    let other_url = format!("https://recordings.provider.test/{tag}-forged.mp3");
    let forged = Report {
        url: &other_url,
        ..rep
    };
    p.report_forged(&app, &hook_m, &forged)
        .await
        .expect_problem(403, "invalid_signature");
    let (base, token) = hook_m.rsplit_once("&t=").expect("a token in the hook");
    let wrong_token = format!("{base}&t={}", &token[..token.len() - 2]);
    p.report(&app, &wrong_token, &forged)
        .await
        .expect_problem(403, "invalid_signature");
    let other_interaction = hook_m.replace(&format!("s={mono}"), &format!("s={dual}"));
    p.report(&app, &other_interaction, &forged)
        .await
        .expect_problem(403, "invalid_signature");
    assert!(app.interactions(&mono).await[0].get("recording").is_none());

    // Mono, reported properly.
    let url_m = format!("https://recordings.provider.test/{tag}-m.mp3");
    let r = p
        .report(
            &app,
            &hook_m,
            &Report {
                call: &call_m,
                url: &url_m,
                id: &format!("RM{tag}"),
                duration_secs: 7,
                channels: 1,
            },
        )
        .await;
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text);
    let m = app.interactions(&mono).await;
    assert_eq!(m[0]["recording"]["channels"], 1, "{m:?}");
    assert_eq!(m[0]["recording"]["url"], url_m.as_str());
    receiver.wait_for_type("recording.completed", 2, WAIT).await;

    // Stored sealed: neither a participant's digits nor a recording URL in Redis.
    let urls = vec![tag.clone()];
    for (key, values) in app.dump().await {
        assert_free_of(&format!("Redis key {key}"), key.as_bytes(), &numbers);
        for v in values {
            assert_free_of(&format!("a value of {key}"), &v, &numbers);
            assert_free_of(&format!("a value of {key}"), &v, &urls);
        }
    }

    // Erasing a participant drops the URLs of their sessions' recordings; a late report
    // brings none back.
    app.delete(&format!("/v1/participants/{}", path_number(a)))
        .await
        .expect(200);
    let erased = app.interactions(&dual).await;
    assert_eq!(erased.len(), 1);
    assert!(erased[0].get("recording").is_none(), "{erased:?}");
    let r = p.report(&app, &hook, &rep).await;
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text);
    assert!(app.interactions(&dual).await[0].get("recording").is_none());
    // The other session's recording is not the erased participant's.
    assert!(app.interactions(&mono).await[0].get("recording").is_some());
    for key in app.scan_keys("*:i:*").await {
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(&key)
            .query_async(&mut app.redis().await)
            .await
            .unwrap();
        let recorded = fields.iter().filter(|f| f.starts_with("r:")).count();
        assert!(recorded <= 1, "{key}: {fields:?}");
    }

    assert_free_of("the logs", captured_logs().as_bytes(), &numbers);
    receiver.stop().await;
}

#[tokio::test]
async fn twilio_records_limits_and_reports_calls() {
    recorded_calls(Provider::Twilio, 230).await;
}

#[tokio::test]
async fn telnyx_records_limits_and_reports_calls() {
    recorded_calls(Provider::Telnyx, 236).await;
}

#[tokio::test]
async fn plivo_records_limits_and_reports_calls() {
    recorded_calls(Provider::Plivo, 242).await;
}

#[tokio::test]
async fn vonage_records_limits_and_reports_calls() {
    recorded_calls(Provider::Vonage, 248).await;
}

/// TeXML takes 60 s to 4 h: a shorter limit is raised to its least, a longer one cut.
#[tokio::test]
async fn telnyx_holds_the_time_limit_within_texmls_range() {
    let p = Provider::Telnyx;
    let app = TestApp::start_with(|c| p.configure(c)).await;
    app.pool("rec", json!({}), &proxies(1)).await;
    let (a, b) = (participant(254), participant(255));
    let (_, proxy) = session(&app, &a, &b, json!({ "max_call_secs": 10 })).await;
    let dial = p.dial(&p.call(&app, &p.call_id(), &a, &proxy).await);
    assert_eq!(dial.time_limit, Some(60));
    assert_no_digits(&app, &[&a, &b]).await;
}

/// A `recording.completed` still waiting for delivery when a participant is erased goes out
/// without the recording's URL and id: they were sealed beside it, and go with the erasure.
#[tokio::test]
async fn a_recording_event_still_queued_at_erasure_goes_out_without_its_url() {
    let p = Provider::Twilio;
    let app = TestApp::start_with(|c| {
        p.configure(c);
        c.event_retry_schedule_ms = vec![1500];
    })
    .await;
    let receiver = Receiver::start().await;
    app.pool(
        "rec",
        json!({ "callback_url": receiver.url("/events"), "cooloff_secs": 600 }),
        &proxies(1),
    )
    .await;
    receiver.set_secrets(vec![app.callback_secret("rec").await]);
    let (a, b) = (participant(256), participant(257));
    let (id, proxy) = session(&app, &a, &b, json!({ "record": true })).await;
    let call = p.call_id();
    let hook = p
        .dial(&p.call(&app, &call, &a, &proxy).await)
        .callback
        .expect("a recording hook");
    receiver.respond_with(503, None, None);
    let url = format!(
        "https://recordings.provider.test/{:016x}.mp3",
        rand::random::<u64>()
    );
    let rep = Report {
        call: &call,
        url: &url,
        id: "RE0001",
        duration_secs: 3,
        channels: 2,
    };
    let r = p.report(&app, &hook, &rep).await;
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text);
    receiver.wait_for_type("recording.completed", 1, WAIT).await;
    app.delete(&format!("/v1/participants/{}", path_number(&b)))
        .await
        .expect(200);
    receiver.respond_normally();
    let events = receiver.wait_for_type("recording.completed", 2, WAIT).await;
    let retried = events.last().unwrap();
    assert_eq!(retried.status, 200);
    assert_eq!(retried.data()["session_id"], id.as_str());
    assert_eq!(retried.data()["recording"]["url"], Value::Null);
    assert_eq!(
        retried.data()["recording"]["provider_recording_id"],
        Value::Null
    );
    assert_eq!(retried.data()["recording"]["channels"], 2);
    assert_no_digits(&app, &[&a, &b]).await;
    receiver.stop().await;
}

/// Rotating the data keys re-seals recordings too: hush then reads them with the new key alone.
#[tokio::test]
async fn recordings_are_resealed_when_the_data_keys_rotate() {
    use crate::rotate::{key_id, new_key, rotate, sealed_with};
    let p = Provider::Twilio;
    let mut app = TestApp::start_with(|c| p.configure(c)).await;
    let old = app.config.data_keys[0].clone();
    let new = new_key();
    app.pool("rec", json!({}), &proxies(1)).await;
    let (a, b) = (participant(258), participant(259));
    let (id, proxy) = session(&app, &a, &b, json!({ "record": true })).await;
    let call = p.call_id();
    let hook = p
        .dial(&p.call(&app, &call, &a, &proxy).await)
        .callback
        .expect("a recording hook");
    let url = "https://recordings.provider.test/rotated.mp3";
    let rep = Report {
        call: &call,
        url,
        id: "RE0002",
        duration_secs: 5,
        channels: 2,
    };
    let r = p.report(&app, &hook, &rep).await;
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text);

    rotate(&app.config, &[&new, &old], None).await;
    let left = sealed_with(&app, key_id(&app.config, &old)).await;
    assert!(left.is_empty(), "still sealed with the old key: {left:?}");
    app.config.data_keys = vec![new];
    app.restart().await;
    let found = app.interactions(&id).await;
    assert_eq!(found[0]["recording"]["url"], url, "{found:?}");
    assert_no_digits(&app, &[&a, &b]).await;
}

/// Idle expiry through each provider's webhook: a call connects (with the session's time
/// limit in the dial) and pushes the idle deadline; once the deadline passes, with no reaper
/// running, the same caller reaches nobody.
#[tokio::test]
async fn an_idle_session_stops_connecting_on_time_in_every_dialect() {
    for (i, p) in [
        Provider::Twilio,
        Provider::Telnyx,
        Provider::Plivo,
        Provider::Vonage,
    ]
    .into_iter()
    .enumerate()
    {
        let app = TestApp::start_with(|c| {
            p.configure(c);
            c.reaper_interval_ms = 600_000;
        })
        .await;
        app.pool(
            "rec",
            json!({ "cooloff_secs": 1, "max_call_secs": 300 }),
            &proxies(1),
        )
        .await;
        let (a, b) = (participant(280 + 2 * i), participant(281 + 2 * i));
        let (id, proxy) = session(&app, &a, &b, json!({ "idle_ttl_secs": 1 })).await;

        let r = p.call(&app, &p.call_id(), &a, &proxy).await;
        assert_eq!(p.dial(&r).time_limit, Some(300), "{p:?}: {}", r.text);
        assert!(
            r.text.contains(&b[1..]),
            "{p:?} connects to the other party: {}",
            r.text
        );
        let got = app.get_session(&id).await.expect(200);
        let deadline = ts_ms(&got["idle_expires_at"]);

        sleep_until_ms(deadline + 150).await;
        let ended = app.get_session(&id).await.expect(200);
        assert_eq!(ended["close_reason"], "idle", "{p:?}: {ended}");
        let r = p.call(&app, &p.call_id(), &a, &proxy).await;
        assert_eq!(r.status, 200, "{p:?}: {}", r.text);
        assert!(
            !r.text.contains(&b[1..]) && !r.text.contains("Dial") && !r.text.contains("connect"),
            "{p:?}: an idle session reaches nobody: {}",
            r.text
        );
        assert_no_digits(&app, &[&a, &b]).await;
    }
}
