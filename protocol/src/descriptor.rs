//! Reading the protocol's own descriptor: the fields of a message and the methods of a service,
//! by name. Tests use it to check that every surface (command-line flags, JSON fields, docs,
//! the browser page) covers what the protocol defines.

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet, ServiceDescriptorProto};

fn file_descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("the built-in descriptor set decodes")
}

fn message(name: &str) -> Option<DescriptorProto> {
    let files = file_descriptor_set().file;
    let mut messages = files.into_iter().flat_map(|f| f.message_type);
    messages.find(|m| m.name() == name)
}

fn service(name: &str) -> Option<ServiceDescriptorProto> {
    let files = file_descriptor_set().file;
    let mut services = files.into_iter().flat_map(|f| f.service);
    services.find(|s| s.name() == name)
}

/// A field of a `gitcap.v1` message: its name, number, whether it is deprecated, and the name
/// of its message or enum type (empty for scalars).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub number: i32,
    pub deprecated: bool,
    pub type_name: String,
}

/// The fields of the top-level message `name` (e.g. `GenerationOptions`), in declaration order;
/// `None` when there is no such message.
pub fn message_fields(name: &str) -> Option<Vec<Field>> {
    let message = message(name)?;
    Some(
        message
            .field
            .iter()
            .map(|f| Field {
                name: f.name().to_string(),
                number: f.number(),
                deprecated: f.options.as_ref().is_some_and(|o| o.deprecated()),
                type_name: f.type_name().rsplit('.').next().unwrap_or_default().to_string(),
            })
            .collect(),
    )
}

/// The names of the top-level messages, in declaration order.
pub fn message_names() -> Vec<String> {
    file_descriptor_set().file.into_iter().flat_map(|f| f.message_type).map(|m| m.name().to_string()).collect()
}

/// The method names of the service `name` (e.g. `Captioner`), in declaration order.
pub fn service_methods(name: &str) -> Option<Vec<String>> {
    Some(service(name)?.method.iter().map(|m| m.name().to_string()).collect())
}

/// The values of the top-level enum `name`, as (name, number).
pub fn enum_values(name: &str) -> Option<Vec<(String, i32)>> {
    let files = file_descriptor_set().file;
    let mut enums = files.into_iter().flat_map(|f| f.enum_type);
    let found = enums.find(|e| e.name() == name)?;
    Some(found.value.iter().map(|v| (v.name().to_string(), v.number())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_messages_and_services() {
        let fields = message_fields("RawImage").unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["width", "height", "rgb"]);
        assert_eq!(fields[2].number, 3);
        let request = message_fields("CaptionRequest").unwrap();
        assert_eq!(request.iter().find(|f| f.name == "options").unwrap().type_name, "GenerationOptions");
        assert_eq!(request.iter().find(|f| f.name == "question").unwrap().type_name, "");
        assert!(message_names().contains(&"CaptionRequest".to_string()));
        assert!(service_methods("Captioner").unwrap().contains(&"Caption".to_string()));
        assert!(message_fields("NoSuchMessage").is_none());
        assert!(enum_values("FinishReason").unwrap().contains(&("FINISH_REASON_EOS".to_string(), 1)));
    }
}
