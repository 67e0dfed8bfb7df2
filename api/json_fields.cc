#include "api/json_fields.h"

namespace berth::api {

Result<nlohmann::json> ParseJsonObject(const std::string& body) {
  if (body.empty()) return Status::InvalidArgument("body", "request body is empty; expected a JSON object");
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) return Status::InvalidArgument("body", "malformed JSON");
  if (!j.is_object()) return Status::InvalidArgument("body", "expected a JSON object");
  return j;
}

const nlohmann::json* FieldReader::Get(const char* field, bool required, Status* status) {
  seen_.insert(field);
  auto it = obj_.find(field);
  if (it == obj_.end() || it->is_null()) {
    if (required) *status = Status::InvalidArgument(field, "is required");
    return nullptr;
  }
  return &*it;
}

Status FieldReader::String(const char* field, std::string* out, bool required) {
  Status s;
  const auto* v = Get(field, required, &s);
  if (!v) return s;
  if (!v->is_string()) return Status::InvalidArgument(field, "must be a string");
  *out = v->get<std::string>();
  return Status::Ok();
}

Status FieldReader::StringArray(const char* field, std::vector<std::string>* out, bool required) {
  Status s;
  const auto* v = Get(field, required, &s);
  if (!v) return s;
  if (!v->is_array()) return Status::InvalidArgument(field, "must be an array of strings");
  std::vector<std::string> items;
  for (const auto& e : *v) {
    if (!e.is_string()) return Status::InvalidArgument(field, "must be an array of strings");
    items.push_back(e.get<std::string>());
  }
  *out = std::move(items);
  return Status::Ok();
}

Status FieldReader::StringMap(const char* field, std::map<std::string, std::string>* out) {
  Status s;
  const auto* v = Get(field, false, &s);
  if (!v) return s;
  if (!v->is_object()) return Status::InvalidArgument(field, "must be an object of string values");
  std::map<std::string, std::string> items;
  for (auto it = v->begin(); it != v->end(); ++it) {
    if (!it.value().is_string()) {
      return Status::InvalidArgument(field, "value of '" + it.key() + "' must be a string");
    }
    items[it.key()] = it.value().get<std::string>();
  }
  *out = std::move(items);
  return Status::Ok();
}

Status FieldReader::Int(const char* field, int64_t* out, int64_t min, int64_t max, bool required) {
  Status s;
  const auto* v = Get(field, required, &s);
  if (!v) return s;
  if (!v->is_number_integer()) return Status::InvalidArgument(field, "must be an integer");
  const std::string range = "must be between " + std::to_string(min) + " and " + std::to_string(max);
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return Status::InvalidArgument(field, range);
  }
  int64_t x = v->get<int64_t>();
  if (x < min || x > max) {
    return Status::InvalidArgument(field, range);
  }
  *out = x;
  return Status::Ok();
}

Status FieldReader::Double(const char* field, double* out, bool required) {
  Status s;
  const auto* v = Get(field, required, &s);
  if (!v) return s;
  if (!v->is_number()) return Status::InvalidArgument(field, "must be a number");
  *out = v->get<double>();
  return Status::Ok();
}

Status FieldReader::Bool(const char* field, bool* out, bool required) {
  Status s;
  const auto* v = Get(field, required, &s);
  if (!v) return s;
  if (!v->is_boolean()) return Status::InvalidArgument(field, "must be true or false");
  *out = v->get<bool>();
  return Status::Ok();
}

Status FieldReader::NoUnknownFields() const {
  for (auto it = obj_.begin(); it != obj_.end(); ++it) {
    if (!seen_.count(it.key())) return Status::InvalidArgument(it.key(), "unknown field");
  }
  return Status::Ok();
}

}  // namespace berth::api
