#include "reverie/config.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <limits>

#include "reverie/common.h"

namespace reverie {
namespace {

const char* TypeName(ConfigValue::Type t) {
  switch (t) {
    case ConfigValue::Type::kNull: return "null";
    case ConfigValue::Type::kBool: return "a bool";
    case ConfigValue::Type::kInt:
    case ConfigValue::Type::kUInt: return "an integer";
    case ConfigValue::Type::kDouble: return "a number";
    case ConfigValue::Type::kString: return "a string";
    case ConfigValue::Type::kList: return "a list";
    case ConfigValue::Type::kMap: return "a mapping";
  }
  return "?";
}

[[noreturn]] void WrongType(const std::string& what, const char* expected, ConfigValue::Type got) {
  throw TypeError(internal::Concat(what, " must be ", expected, ", got ", TypeName(got)));
}

void AppendString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned char>(c));
          *out += buf;
        } else {
          out->push_back(c);  // UTF-8 passes through
        }
    }
  }
  out->push_back('"');
}

void AppendJson(const ConfigValue& v, std::string* out) {
  char buf[40];
  switch (v.type()) {
    case ConfigValue::Type::kNull: *out += "null"; return;
    case ConfigValue::Type::kBool: *out += v.AsBool("") ? "true" : "false"; return;
    case ConfigValue::Type::kInt:
      std::snprintf(buf, sizeof(buf), "%" PRId64, v.AsInt(""));
      *out += buf;
      return;
    case ConfigValue::Type::kUInt:
      std::snprintf(buf, sizeof(buf), "%" PRIu64, v.AsUInt(""));
      *out += buf;
      return;
    case ConfigValue::Type::kDouble: {
      const double d = v.AsDouble("");
      REVERIE_CHECK(std::isfinite(d), "a configuration value must be finite, got ", d);
      std::snprintf(buf, sizeof(buf), "%.17g", d);
      std::string text = buf;
      // Keep it a float when read back (JSON readers turn "2" into an integer).
      if (text.find_first_of(".eE") == std::string::npos) text += ".0";
      *out += text;
      return;
    }
    case ConfigValue::Type::kString: AppendString(v.AsString(""), out); return;
    case ConfigValue::Type::kList: {
      out->push_back('[');
      bool first = true;
      for (const ConfigValue& item : v.AsList("")) {
        if (!first) out->push_back(',');
        first = false;
        AppendJson(item, out);
      }
      out->push_back(']');
      return;
    }
    case ConfigValue::Type::kMap: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, item] : v.AsMap("")) {
        if (!first) out->push_back(',');
        first = false;
        AppendString(key, out);
        out->push_back(':');
        AppendJson(item, out);
      }
      out->push_back('}');
      return;
    }
  }
}

const ConfigValue& Null() {
  static const ConfigValue* null = new ConfigValue();
  return *null;
}

}  // namespace

ConfigValue ConfigValue::Bool(bool v) {
  ConfigValue c;
  c.type_ = Type::kBool;
  c.b_ = v;
  return c;
}

ConfigValue ConfigValue::Int(int64_t v) {
  ConfigValue c;
  c.type_ = Type::kInt;
  c.i_ = v;
  return c;
}

ConfigValue ConfigValue::UInt(uint64_t v) {
  if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Int(static_cast<int64_t>(v));
  }
  ConfigValue c;
  c.type_ = Type::kUInt;
  c.u_ = v;
  return c;
}

ConfigValue ConfigValue::Double(double v) {
  ConfigValue c;
  c.type_ = Type::kDouble;
  c.d_ = v;
  return c;
}

ConfigValue ConfigValue::String(std::string v) {
  ConfigValue c;
  c.type_ = Type::kString;
  c.s_ = std::move(v);
  return c;
}

ConfigValue ConfigValue::MakeList(List v) {
  ConfigValue c;
  c.type_ = Type::kList;
  c.list_ = std::make_shared<List>(std::move(v));
  return c;
}

ConfigValue ConfigValue::MakeMap(Map v) {
  ConfigValue c;
  c.type_ = Type::kMap;
  c.map_ = std::make_shared<Map>(std::move(v));
  return c;
}

bool ConfigValue::AsBool(const std::string& what) const {
  if (type_ != Type::kBool) WrongType(what, "a bool", type_);
  return b_;
}

int64_t ConfigValue::AsInt(const std::string& what) const {
  if (type_ == Type::kInt) return i_;
  if (type_ == Type::kUInt) {
    throw std::invalid_argument(internal::Concat(what, " must be at most ", INT64_MAX, ", got ", u_));
  }
  WrongType(what, "an integer", type_);
}

uint64_t ConfigValue::AsUInt(const std::string& what) const {
  if (type_ == Type::kUInt) return u_;
  if (type_ == Type::kInt) {
    REVERIE_CHECK(i_ >= 0, what, " must be >= 0, got ", i_);
    return static_cast<uint64_t>(i_);
  }
  WrongType(what, "an integer", type_);
}

double ConfigValue::AsDouble(const std::string& what) const {
  if (type_ == Type::kDouble) return d_;
  if (type_ == Type::kInt) return static_cast<double>(i_);
  if (type_ == Type::kUInt) return static_cast<double>(u_);
  WrongType(what, "a number", type_);
}

const std::string& ConfigValue::AsString(const std::string& what) const {
  if (type_ != Type::kString) WrongType(what, "a string", type_);
  return s_;
}

const ConfigValue::List& ConfigValue::AsList(const std::string& what) const {
  if (type_ != Type::kList) WrongType(what, "a list", type_);
  return *list_;
}

const ConfigValue::Map& ConfigValue::AsMap(const std::string& what) const {
  if (type_ != Type::kMap) WrongType(what, "a mapping", type_);
  return *map_;
}

const ConfigValue& ConfigValue::Get(const std::string& key) const {
  if (type_ != Type::kMap) return Null();
  const auto it = map_->find(key);
  return it == map_->end() ? Null() : it->second;
}

const ConfigValue& ConfigValue::At(const std::string& key, const std::string& what) const {
  const Map& m = AsMap(what);
  const auto it = m.find(key);
  REVERIE_CHECK(it != m.end(), what, " needs a setting '", key, "'");
  return it->second;
}

bool ConfigValue::Has(const std::string& key) const {
  return type_ == Type::kMap && map_->count(key) != 0;
}

void ConfigValue::Set(const std::string& key, ConfigValue value) {
  if (type_ == Type::kNull) *this = MakeMap();
  REVERIE_CHECK(type_ == Type::kMap, "cannot set '", key, "' in ", TypeName(type_));
  if (map_.use_count() > 1) map_ = std::make_shared<Map>(*map_);  // copy on write
  (*map_)[key] = std::move(value);
}

void ConfigValue::Append(ConfigValue value) {
  REVERIE_CHECK(type_ == Type::kList, "cannot append to ", TypeName(type_));
  if (list_.use_count() > 1) list_ = std::make_shared<List>(*list_);
  list_->push_back(std::move(value));
}

std::string ConfigValue::ToJson() const {
  std::string out;
  AppendJson(*this, &out);
  return out;
}

const std::string& KindOf(const ConfigValue& part, const std::string& what) {
  REVERIE_CHECK(part.is_map(), what, " must be a mapping with a 'kind', got ",
                part.is_null() ? "nothing" : "another value");
  return part.At("kind", what).AsString(what + " kind");
}

uint64_t Fnv1a(const std::string& text) {
  uint64_t h = 14695981039346656037ull;  // the FNV-1a 64-bit offset basis
  for (const char c : text) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

}  // namespace reverie
