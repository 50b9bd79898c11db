# frozen_string_literal: true
#
# The field mapping of lapseguard's log pipeline, in one place: what a container's log
# line becomes in OpenSearch. Pure Ruby (json and time from the standard library), no
# Fluentd dependency, so that the tests run exactly this code (tests/logging); the
# Fluentd filter `lapseguard_fields` (filter_lapseguard_fields.rb) is a thin wrapper.
#
# Input: a record as it leaves the kubernetes_metadata filter: the CRI parser's
# `message` (the line), `stream` and `logtag`, and `kubernetes` (namespace_name,
# pod_name, container_name, container_image, host, labels). Output: a new record with
#
#   @timestamp   the event's own time (our JSON `timestamp`, else the CRI time)
#   message      our event's message, or the whole line when it is not JSON
#   level        TRACE | DEBUG | INFO | WARN | ERROR, from our JSON, from a PostgreSQL
#                or RabbitMQ line prefix, or from a foreign JSON logger; absent if unknown
#   service      our `service` field (backend, worker, camera-agent, lapseguard), else
#                the pod's app.kubernetes.io/name label (postgres, rabbitmq, minio), else
#                the container name
#   target       the Rust module that logged (our lines only)
#   request_id image_id job_id project camera   lifted to the top: the event's own
#                field first, then the current `span` object, then a `spans` list
#                (innermost first)
#   error error_kind   our error fields (`error`, and `kind` of backend problems)
#   app component instance   the pod's app.kubernetes.io/{name,component,instance}
#   namespace pod container node image stream   where the line came from
#   span         the current span's fields (as logged)
#   fields       every other field of a JSON line, untouched
#   raw_severity the severity word as the program wrote it (PostgreSQL LOG, FATAL...)
#
# Nothing else of the input survives: no kubernetes.* annotations or ids, no
# labels map (label keys contain dots, which OpenSearch would expand into objects).
require "json"
require "time"

module LapseguardFields
  LIFTED = %w[request_id image_id job_id project camera].freeze
  # Keys of our JSON lines that become top-level fields of their own.
  OWN = (%w[timestamp level message service target span spans error kind] + LIFTED).freeze
  LEVELS = {
    "TRACE" => "TRACE", "DEBUG" => "DEBUG", "DEBUG1" => "DEBUG", "DEBUG2" => "DEBUG",
    "DEBUG3" => "DEBUG", "DEBUG4" => "DEBUG", "DEBUG5" => "DEBUG",
    "INFO" => "INFO", "LOG" => "INFO", "NOTICE" => "INFO", "STATEMENT" => "INFO",
    "DETAIL" => "INFO", "HINT" => "INFO", "CONTEXT" => "INFO",
    "WARN" => "WARN", "WARNING" => "WARN",
    "ERROR" => "ERROR", "FATAL" => "ERROR", "PANIC" => "ERROR", "CRITICAL" => "ERROR",
    "ALERT" => "ERROR", "EMERGENCY" => "ERROR", "CRIT" => "ERROR", "ERR" => "ERROR"
  }.freeze
  # PostgreSQL's default stderr prefix (log_line_prefix '%m [%p] '):
  #   2026-11-26 08:06:37.413 UTC [18715] LOG:  checkpoint starting: time
  POSTGRES = /\A\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[\d+\] (?:\S+ )?([A-Z]+[1-5]?):  /.freeze
  # RabbitMQ 3.9+: 2026-11-26 08:01:30.123456+00:00 [info] <0.230.0> ...
  RABBITMQ = /\A\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S* \[([a-z]+)\] /.freeze

  module_function

  # record: Hash (string keys); cri_time: Time of the CRI line. Returns a new Hash.
  def transform(record, cri_time)
    line = record["message"].to_s
    k8s = record["kubernetes"].is_a?(Hash) ? record["kubernetes"] : {}
    labels = k8s["labels"].is_a?(Hash) ? k8s["labels"] : {}
    out = {}
    json = parse_json(line)
    if json
      own_line(out, json)
    else
      out["message"] = line
      m = POSTGRES.match(line) || RABBITMQ.match(line)
      if m
        out["raw_severity"] = m[1]
        level = LEVELS[m[1].upcase]
        out["level"] = level if level
      end
    end
    out["@timestamp"] ||= cri_time.utc.iso8601(6)
    out["service"] ||= string(labels["app.kubernetes.io/name"]) || string(k8s["container_name"])
    {
      "app" => labels["app.kubernetes.io/name"], "component" => labels["app.kubernetes.io/component"],
      "instance" => labels["app.kubernetes.io/instance"], "namespace" => k8s["namespace_name"],
      "pod" => k8s["pod_name"], "container" => k8s["container_name"], "node" => k8s["host"],
      "image" => k8s["container_image"], "stream" => record["stream"]
    }.each { |key, value| out[key] = string(value) if string(value) }
    out.delete_if { |_, v| v.nil? }
  end

  # A JSON object on one line (ours, or another program's JSON logger).
  def parse_json(line)
    return nil unless line.start_with?("{")
    value = JSON.parse(line)
    value.is_a?(Hash) ? value : nil
  rescue JSON::ParserError
    nil
  end

  def own_line(out, json)
    span = json["span"].is_a?(Hash) ? json["span"] : nil
    spans = json["spans"].is_a?(Array) ? json["spans"].grep(Hash).reverse : []
    nested = json["record"].is_a?(Hash) ? json["record"] : {} # CloudNativePG wraps PostgreSQL's records
    out["@timestamp"] = time(json["timestamp"]) || time(json["ts"]) || time(nested["log_time"])
    out["message"] = string(json["message"]) || string(nested["message"]) || string(json["msg"]) || ""
    raw = string(nested["error_severity"]) || string(json["level"])
    if raw
      out["raw_severity"] = raw if nested["error_severity"] || !LEVELS.key?(raw)
      level = LEVELS[raw.upcase]
      out["level"] = level if level
    end
    out["service"] = string(json["service"])
    out["target"] = string(json["target"])
    LIFTED.each do |key|
      out[key] = string(json[key]) || string(span && span[key]) ||
                 spans.map { |s| string(s[key]) }.compact.first
    end
    out["error"] = string(json["error"])
    out["error_kind"] = string(json["kind"])
    out["span"] = span if span
    rest = json.reject { |key, _| OWN.include?(key) }
    out["fields"] = rest unless rest.empty?
  end

  # Scalars as strings (ids may be logged as numbers); objects and arrays are not ids.
  def string(value)
    case value
    when String then value.empty? ? nil : value
    when Numeric, true, false then value.to_s
    end
  end

  def time(value)
    return nil unless value.is_a?(String) && !value.empty?
    Time.iso8601(value).utc.iso8601(6)
  rescue ArgumentError
    nil
  end
end
