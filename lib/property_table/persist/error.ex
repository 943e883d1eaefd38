defmodule PropertyTable.Persist.Error do
  @moduledoc """
  Raised by the bang functions of `PropertyTable.Persist` (and by
  `PropertyTable.Persist.get_snapshot_list/1` when the snapshots directory cannot be read).

  Fields:

    * `:reason` - an atom: `:enoent`, `:bad_checksum`, `:bad_file`, `:not_a_regular_file`,
      `:invalid_snapshot_id`, `:no_table`, `:bad_row`, `:unsafe_term`, `:busy`,
      `:chunk_too_large`, `:internal_error` (a bug: a thread of the NIF panicked; the files on
      disk are as after any failed call), or a POSIX error such as `:eacces`, `:enospc`,
      `:erofs`, `:enotdir`, `:eio`.
    * `:path` - the file or directory concerned, or `nil`.
    * `:operation` - the function that failed, e.g. `:persist_to_disk`.
  """

  defexception [:reason, :path, :operation]

  @type t :: %__MODULE__{reason: atom(), path: String.t() | nil, operation: atom() | nil}

  @impl true
  def message(%__MODULE__{reason: reason, path: path, operation: operation}) do
    prefix = if operation, do: "#{operation} failed: ", else: ""
    where = if path, do: " (#{path})", else: ""
    "#{prefix}#{describe(reason)}#{where}"
  end

  @doc false
  @spec describe(atom()) :: String.t()
  def describe(:enoent), do: "no such file (nothing persisted yet?)"
  def describe(:bad_checksum), do: "checksum mismatch: the file is corrupt"
  def describe(:bad_file), do: "not a valid property table file (truncated or damaged)"

  def describe(:not_a_regular_file),
    do:
      "not a regular file (a FIFO, socket, device, directory, or a symlink where one is refused)"

  def describe(:invalid_snapshot_id),
    do: "invalid snapshot id (expected 16 uppercase hexadecimal characters)"

  def describe(:no_table), do: "the ETS table does not exist or is not accessible"
  def describe(:bad_row), do: "the table holds a row that is not {property, value, timestamp}"

  def describe(:unsafe_term),
    do: "the file needs atoms that do not exist (refused because of safe: true)"

  def describe(:busy), do: "another writer holds the table directory's lock"

  def describe(:internal_error),
    do: "internal error: a thread of the NIF panicked (its message went to standard error)"

  def describe(:chunk_too_large),
    do: "the rows of one chunk encode to more than the format's 256 MiB (lower :chunk_size)"

  def describe(:log_tail),
    do:
      "the change log's records from the first that does not verify on were not applied " <>
        "(one torn by a power cut was never acknowledged; a damaged one loses its changes " <>
        "and those of later records)"

  def describe(:restart),
    do: "internal: the change log could not take this persist (it is retried as a full write)"

  def describe(reason) when is_atom(reason) do
    case :file.format_error(reason) do
      ~c"unknown POSIX error" ++ _ -> Atom.to_string(reason)
      text -> "#{reason}: #{text}"
    end
  end
end
