# frozen_string_literal: true
#
# Fluentd filter `lapseguard_fields`: applies LapseguardFields.transform (the field
# mapping, lapseguard_fields.rb beside this file) to every record. Loaded from the
# plugin directory (`fluentd -p /fluentd/plugins`). docs/logging.md lists the fields.
require "fluent/plugin/filter"
require_relative "lapseguard_fields"

module Fluent
  module Plugin
    class LapseguardFieldsFilter < Filter
      Fluent::Plugin.register_filter("lapseguard_fields", self)

      def filter(_tag, time, record)
        LapseguardFields.transform(record, Time.at(time.to_r))
      end
    end
  end
end
