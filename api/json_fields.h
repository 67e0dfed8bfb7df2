// Strict JSON -> typed value extraction. Every failure is an
// INVALID_ARGUMENT Status naming the field and the reason; unknown fields
// are rejected so that typos never pass silently.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace berth::api {

Result<nlohmann::json> ParseJsonObject(const std::string& body);

class FieldReader {
 public:
  explicit FieldReader(const nlohmann::json& obj) : obj_(obj) {}

  Status String(const char* field, std::string* out, bool required = false);
  Status StringArray(const char* field, std::vector<std::string>* out, bool required = false);
  Status StringMap(const char* field, std::map<std::string, std::string>* out);
  Status Int(const char* field, int64_t* out, int64_t min, int64_t max, bool required = false);
  Status Bool(const char* field, bool* out, bool required = false);
  Status Double(const char* field, double* out, bool required = false);
  // After reading all known fields: rejects any field that was not read.
  Status NoUnknownFields() const;

 private:
  const nlohmann::json* Get(const char* field, bool required, Status* status);
  const nlohmann::json& obj_;
  std::set<std::string> seen_;
};

}  // namespace berth::api
