defmodule PropertyTable.Persist.Native.RestoreOpen do
  @moduledoc false
  # What `PropertyTable.Persist.Native.restore_open/2` found: the file to read (or why there
  # is none), the files it skipped on the way (they did not verify) and the paths corrupt
  # files were moved to. Encoded by the Rust struct of the same name (native/ptable_nif).

  alias PropertyTable.Persist.Native
  alias PropertyTable.Persist.Native.Source

  @enforce_keys [:file, :skipped, :quarantined]
  defstruct @enforce_keys

  @type t :: %__MODULE__{
          file: {:ok, Source.t()} | {:error, Native.failure()},
          skipped: [skipped()],
          quarantined: [binary()]
        }

  # A file not used, or (`:log_tail`) the byte offset and fault of the first record of a
  # change log that was not applied (`nil` for other reasons).
  @type skipped :: %{
          reason: atom(),
          path: binary() | nil,
          offset: non_neg_integer() | nil,
          fault: atom() | nil
        }
end

defmodule PropertyTable.Persist.Native.Source do
  @moduledoc false
  # The newest file of a table directory that verified, open for reading, and the chunks
  # it holds. Encoded by the Rust struct of the same name (native/ptable_nif).

  alias PropertyTable.Persist.Native

  @enforce_keys [:reader, :kind, :path, :chunks]
  defstruct @enforce_keys

  @type t :: %__MODULE__{
          reader: Native.reader(),
          kind: :stable | :backup | :tmp,
          path: binary(),
          chunks: non_neg_integer()
        }
end

defmodule PropertyTable.Persist.Native.FileInfo do
  @moduledoc false
  # One file of a table directory as `PropertyTable.Persist.Native.inspect/2` reports it:
  # fields its header does not tell are `nil`; `status` is `:ok` (it verifies), the reason
  # it fails, or `:unverified` (inspected without verification, its header is sound). The
  # log fields (`base_sequence` .. `stop_offset`) are `nil` for table files. Encoded by the
  # Rust struct of the same name (native/ptable_nif).

  @enforce_keys [
    :path,
    :kind,
    :size,
    :modified_us,
    :format_version,
    :created_us,
    :sequence,
    :rows,
    :compression,
    :status,
    :base_sequence,
    :continues,
    :records,
    :valid_bytes,
    :stop_reason,
    :stop_offset
  ]
  defstruct @enforce_keys

  @type t :: %__MODULE__{
          path: binary(),
          kind:
            :stable
            | :backup
            | :tmp
            | :quarantined
            | :snapshot
            | :log
            | :backup_log
            | :log_tmp,
          size: non_neg_integer(),
          modified_us: integer(),
          format_version: 1 | 2 | nil,
          created_us: integer() | nil,
          sequence: non_neg_integer() | nil,
          rows: non_neg_integer() | nil,
          compression: 0..9 | nil,
          status: atom(),
          base_sequence: non_neg_integer() | nil,
          continues: :stable | :backup | :tmp | :none | nil,
          records: non_neg_integer() | nil,
          valid_bytes: non_neg_integer() | nil,
          stop_reason: atom() | nil,
          stop_offset: non_neg_integer() | nil
        }
end
