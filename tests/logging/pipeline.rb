# frozen_string_literal: true
#
# What the collector's pipeline (fluentd/conf/fluent.conf) does to a node's container
# log files, for the tests: ruby tests/logging/pipeline.rb DIR... prints one JSON
# document per line, as the opensearch output would index it, each wrapped as
# {"index": "lapseguard-logs-YYYY.MM.DD", "file": ..., "line": N, "doc": {...}}.
#
#   in_tail + parser cri   the CRI line format "<time> <stream> <P|F> <text>"     (re-done here)
#   concat                 P(artial) parts joined up to the F part                 (re-done here)
#   kubernetes_metadata    `kubernetes` from DIR/pods.json, as the filter shapes it (stand-in:
#                          no API server here)
#   lapseguard_fields      fluentd/plugins/lapseguard_fields.rb                     (THE SAME CODE)
#   opensearch             logstash_format: index lapseguard-logs-%Y.%m.%d of @timestamp, UTC
#
# Only the field mapping is the collector's own code; the three stand-ins follow the
# plugins' documented output, and the tail of each is tested in tests/logging.
require "json"
require "time"
require_relative "../../fluentd/plugins/lapseguard_fields"

CRI = /\A(?<time>[^ ]+) (?<stream>stdout|stderr) (?<logtag>[^ ]*) (?<message>.*)\z/.freeze
# /var/log/containers/<pod>_<namespace>_<container>-<64 hex>.log (the kubelet's link name)
FILE = /\A(?<pod>[^_]+)_(?<namespace>[^_]+)_(?<container>.+)-(?<id>[0-9a-f]{64})\.log\z/.freeze

ARGV.each do |dir|
  pods = JSON.parse(File.read(File.join(dir, "pods.json")))
  Dir.glob(File.join(dir, "*.log")).sort.each do |path|
    name = File.basename(path)
    f = FILE.match(name) or abort("#{path}: not a /var/log/containers file name")
    pod = pods.fetch(f[:pod]) { abort("#{path}: pod #{f[:pod]} not in pods.json") }
    kubernetes = {
      "container_name" => f[:container], "namespace_name" => f[:namespace], "pod_name" => f[:pod],
      "container_image" => pod["container_image"], "host" => pod["host"], "labels" => pod["labels"]
    }
    partial = nil
    File.foreach(path).with_index(1) do |raw, lineno|
      m = CRI.match(raw.chomp) or abort("#{path}:#{lineno}: not a CRI log line")
      if m[:logtag] == "P"
        partial = (partial || "") + m[:message]
        next
      end
      text = (partial || "") + m[:message]
      partial = nil
      record = { "stream" => m[:stream], "logtag" => m[:logtag], "message" => text, "kubernetes" => kubernetes }
      doc = LapseguardFields.transform(record, Time.iso8601(m[:time]))
      day = Time.iso8601(doc["@timestamp"]).utc.strftime("%Y.%m.%d")
      puts JSON.generate({ "index" => "lapseguard-logs-#{day}", "file" => path, "line" => lineno, "doc" => doc })
    end
  end
end
