//! Identities at the broker: each device gets a credential of its own and may publish only its
//! own streams (`tapwatch/v1/{id}/<stream>`) and read only its own hub-to-edge topics; only the
//! hub's identity may take the subscription to every device's streams.
//!
//! This drives Mosquitto's dynamic-security plugin over its control topic
//! (`$CONTROL/dynamic-security/v1`) with the broker admin's credential (`mqtt.admin_username`,
//! `mqtt.admin_password_file`). Mosquitto's plain ACL file is not enough: Mosquitto 2.0 does not
//! check subscriptions against it, so a device could join the hub's shared subscription, be
//! dealt half of every device's messages and have them dropped at delivery (measured with
//! 2.0.11). The plugin checks subscribe ACLs at SUBSCRIBE (refused with reason 135), and its 2.0
//! ACLs have no `%u`, so each device has a role of its own with literal topics.

use crate::config::Config;
use base64::Engine;
use firmware::proto::Stream;
use serde_json::{json, Value};
use std::time::Duration;

/// The plugin's control topic, and where it answers.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

/// Topics the hub publishes to an edge, under `tapwatch/v1/{id}/`.
pub const HUB_TO_EDGE: [&str; 4] = ["config", "models", "commands", "ack"];

/// A new device password: 32 random bytes, base64url.
pub fn new_password() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn acl(kind: &str, topic: String) -> Value {
    json!({"acltype": kind, "topic": topic, "priority": 0, "allow": true})
}

/// The role and client of one identity, made again from nothing (an old client of that name is
/// removed first, which also ends its connection: a new password takes effect at once). With
/// `client_id`, the identity may connect only under that client id (so no one else's session
/// can be taken over by connecting with its id).
fn identity(
    username: &str,
    password: &str,
    client_id: Option<&str>,
    role: &str,
    acls: Vec<Value>,
) -> Vec<Value> {
    let mut c = vec![
        json!({"command": "deleteClient", "username": username}),
        json!({"command": "deleteRole", "rolename": role}),
        json!({"command": "createRole", "rolename": role}),
    ];
    c.extend(acls.into_iter().map(|mut a| {
        a["command"] = json!("addRoleACL");
        a["rolename"] = json!(role);
        a
    }));
    let mut client = json!({"command": "createClient", "username": username,
                            "password": password, "roles": [{"rolename": role}]});
    if let Some(id) = client_id {
        client["clientid"] = json!(id);
    }
    c.push(client);
    c
}

/// A device's identity: user name and client id = device id; it may publish each of its streams
/// and read its hub-to-edge topics, nothing else.
pub fn device_commands(id: &str, password: &str, prefix: &str) -> Vec<Value> {
    let topic = |leaf: &str| format!("{prefix}tapwatch/v1/{id}/{leaf}");
    let mut acls: Vec<Value> =
        Stream::ALL.iter().map(|s| acl("publishClientSend", topic(s.name()))).collect();
    for leaf in HUB_TO_EDGE {
        acls.push(acl("subscribeLiteral", topic(leaf)));
        acls.push(acl("publishClientReceive", topic(leaf)));
    }
    identity(id, password, Some(id), &format!("tapwatch-device-{id}"), acls)
}

/// The hub's identity: its subscription to every device's streams (`subscription`, plain or
/// shared; only it may take it), their messages, and publishing hub-to-edge topics.
pub fn hub_commands(
    username: &str,
    password: &str,
    subscription: &str,
    prefix: &str,
) -> Vec<Value> {
    let mut acls = vec![
        acl("subscribePattern", subscription.to_string()),
        acl("publishClientReceive", format!("{prefix}tapwatch/v1/#")),
    ];
    for leaf in HUB_TO_EDGE {
        acls.push(acl("publishClientSend", format!("{prefix}tapwatch/v1/+/{leaf}")));
    }
    identity(username, password, None, "tapwatch-hub", acls)
}

/// What went wrong with a list of commands: the first answer with an error, but for a
/// `delete...` of something that was not there.
pub fn check_responses(commands: &[Value], answer: &Value) -> Result<(), String> {
    let responses = answer["responses"]
        .as_array()
        .ok_or_else(|| format!("the broker's answer has no responses: {answer}"))?;
    if responses.len() != commands.len() {
        return Err(format!(
            "the broker answered {} of {} commands: {answer}",
            responses.len(),
            commands.len()
        ));
    }
    for (c, r) in commands.iter().zip(responses) {
        let name = c["command"].as_str().unwrap_or_default();
        if let Some(e) = r.get("error").and_then(Value::as_str) {
            if !(name.starts_with("delete") && e.contains("not found")) {
                return Err(format!("broker: {name}: {e}"));
            }
        }
    }
    Ok(())
}

fn read_first_line(path: &std::path::Path, what: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Send `commands` to the broker's dynamic-security plugin as its admin, and wait for the answer.
pub async fn apply(config: &Config, commands: Vec<Value>) -> Result<(), String> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event};
    let m = &config.mqtt;
    if m.admin_username.is_empty() {
        return Err("mqtt.admin_username is not set: the hub cannot give devices identities at \
                    the broker (see SECURITY.md)"
            .into());
    }
    let password = read_first_line(&m.admin_password_file, "mqtt.admin_password_file")?;
    let id = format!("{}-admin-{}", m.client_id, &new_password()[..8]);
    let mut o = m.options(&id, Some((&m.admin_username, password)))?;
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(o, 16);
    let request = json!({"commands": commands}).to_string();
    let run = async {
        client
            .subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce)
            .await
            .map_err(|e| format!("broker: {e}"))?;
        loop {
            match events.poll().await.map_err(|e| format!("broker {}: {e}", m.broker))? {
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, request.clone())
                        .await
                        .map_err(|e| format!("broker: {e}"))?;
                }
                Event::Incoming(Packet::Publish(p))
                    if p.topic.as_ref() == RESPONSE_TOPIC.as_bytes() =>
                {
                    let answer: Value = serde_json::from_slice(&p.payload)
                        .map_err(|e| format!("the broker's answer is not JSON: {e}"))?;
                    return check_responses(&commands, &answer);
                }
                _ => {}
            }
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .map_err(|_| format!("broker {}: no answer from the dynamic-security plugin", m.broker))?;
    let _ = client.disconnect().await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_device_may_publish_only_its_own_streams() {
        let c = device_commands("tap-1", "pw", "p/");
        let acls: Vec<(&str, &str)> = c
            .iter()
            .filter(|c| c["command"] == "addRoleACL")
            .map(|c| (c["acltype"].as_str().unwrap(), c["topic"].as_str().unwrap()))
            .collect();
        assert!(acls.contains(&("publishClientSend", "p/tapwatch/v1/tap-1/anomalies")));
        assert!(acls.contains(&("subscribeLiteral", "p/tapwatch/v1/tap-1/config")));
        assert!(acls.iter().all(|(_, t)| t.starts_with("p/tapwatch/v1/tap-1/")), "{acls:?}");
        assert!(acls.iter().all(|(k, _)| !k.starts_with("subscribePattern")));
        assert_eq!(c.last().unwrap()["username"], "tap-1");
        assert_eq!(c.last().unwrap()["clientid"], "tap-1");
        let hub = hub_commands("hub", "pw", "$share/g/p/tapwatch/v1/+/+", "p/");
        assert!(hub.iter().any(|c| c["topic"] == "$share/g/p/tapwatch/v1/+/+"));
    }

    #[test]
    fn test_responses_are_checked() {
        let cmds = device_commands("tap-1", "pw", "");
        let mut answer = json!({"responses": cmds.iter().map(|c| json!({"command": c["command"]})).collect::<Vec<_>>()});
        assert_eq!(check_responses(&cmds, &answer), Ok(()));
        answer["responses"][0]["error"] = json!("Client not found");
        assert_eq!(check_responses(&cmds, &answer), Ok(()));
        answer["responses"][2]["error"] = json!("Role already exists");
        assert!(check_responses(&cmds, &answer).unwrap_err().contains("createRole"));
        assert!(check_responses(&cmds, &json!({"responses": []})).is_err());
    }
}
