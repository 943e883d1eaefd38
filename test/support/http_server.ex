defmodule PropertyTable.Persist.TestSupport.HttpServer do
  @moduledoc """
  Local HTTP servers on 127.0.0.1 for the precompiled NIF tests: OTP's `:httpd` serving a
  directory, and a raw one that promises more bytes than it sends (a truncated transfer).
  """

  @doc """
  Serves the files of `docs` (OTP's `:httpd`, on a free port); returns the server and
  its base URL.
  """
  @spec serve(Path.t()) :: {pid(), String.t()}
  def serve(docs) do
    {:ok, _} = Application.ensure_all_started(:inets)
    root = Path.join(docs, ".httpd")
    File.mkdir_p!(root)

    {:ok, pid} =
      :inets.start(:httpd,
        port: 0,
        bind_address: {127, 0, 0, 1},
        server_name: ~c"localhost",
        server_root: String.to_charlist(root),
        document_root: String.to_charlist(docs)
      )

    {pid, "http://127.0.0.1:#{:httpd.info(pid)[:port]}"}
  end

  @doc "Stops a server started by `serve/1`; its port then refuses connections."
  @spec stop(pid()) :: :ok
  def stop(pid), do: :inets.stop(:httpd, pid)

  @doc """
  Answers one request with a `200` announcing `length` bytes, sends only `body`, and closes
  the connection; returns the base URL.
  """
  @spec truncating(binary(), pos_integer()) :: String.t()
  def truncating(body, length) when byte_size(body) < length do
    {:ok, listener} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(listener)

    {:ok, _pid} =
      Task.start_link(fn ->
        {:ok, socket} = :gen_tcp.accept(listener)
        {:ok, _request} = :gen_tcp.recv(socket, 0)

        :ok =
          :gen_tcp.send(socket, "HTTP/1.1 200 OK\r\nContent-Length: #{length}\r\n\r\n" <> body)

        :gen_tcp.close(socket)
        :gen_tcp.close(listener)
      end)

    "http://127.0.0.1:#{port}"
  end
end
