using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;

namespace JobRunner.InMemory;

/// <summary>
/// The requests of the finished jobs that the in-memory store keeps, packed as bytes into shared chunks, so that a kept
/// finished job is no object of its own: the garbage collector neither copies it from one generation to the next nor
/// traces it. Workload and tenant names are kept once each, in a table. Not thread-safe: the store calls it under its
/// lock.
/// </summary>
/// <remarks>
/// Finished jobs leave in about the order they finished, so chunks empty in about the order they filled: a chunk is
/// reused once every job packed into it has been evicted or unpacked. A request is not packed (the store keeps the object)
/// when it has a retry policy, a priority outside a byte or a string that is not valid UTF-16, when it is larger than a
/// quarter of a chunk, or when the name table is full.
/// </remarks>
internal sealed class PackedRequests
{
    // Large enough that chunks live on the large object heap (never copied), small enough to free memory as jobs leave.
    internal const int ChunkSize = 256 * 1024;
    private const int MaxNames = 1 << 16;
    private const int MaxFreeChunks = 2;

    private const byte HasDedupeKey = 1;
    private const byte HasConcurrencyKey = 2;
    private const byte HasNotBefore = 4;
    private const byte HasTimeout = 8;
    private const byte HasAffinity = 16;
    private const byte HasCorrelationId = 32;
    private const byte HasParentId = 64;
    private const byte HasLabels = 128;

    // Strict, so that a string that is not valid UTF-16 (a lone surrogate) is not packed rather than changed on the way.
    private static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    // The empty labels of a request that sets none.
    private static readonly IReadOnlyDictionary<string, string> NoLabels = new JobRequest("-").Labels;

    private readonly Dictionary<string, int> _nameIds = new(StringComparer.Ordinal);
    private readonly List<string> _names = [];
    private readonly Stack<PackedChunk> _free = new();
    private PackedChunk? _current;
    private int _used;

    /// <summary>Gets how many chunks hold packed requests (for tests).</summary>
    internal int ChunksInUse { get; private set; }

    /// <summary>Packs <paramref name="request"/> and the job's creation time; false when it is not packable.</summary>
    public bool TryPack(JobRequest request, long createdTicks, out PackedChunk chunk, out int offset)
    {
        chunk = null!;
        offset = 0;
        if (request.Retry is not null || request.Priority is < 0 or > byte.MaxValue
            || !TryName(request.Workload, out var workload) || !TryName(request.Tenant, out var tenant))
        {
            return false;
        }

        if (!TrySize(request, out var size, out var flags) || size > ChunkSize / 4)
        {
            return false;
        }

        if (_current is null || _used + size > ChunkSize)
        {
            NewChunk();
        }

        chunk = _current!;
        offset = _used;
        var span = chunk.Bytes.AsSpan(offset, size);
        BinaryPrimitives.WriteInt64LittleEndian(span, createdTicks);
        BinaryPrimitives.WriteInt32LittleEndian(span[8..], workload);
        BinaryPrimitives.WriteInt32LittleEndian(span[12..], tenant);
        span[16] = (byte)request.Priority;
        span[17] = flags;
        BinaryPrimitives.WriteInt32LittleEndian(span[18..], request.Input.Length);
        request.Input.Span.CopyTo(span[22..]);
        var at = 22 + request.Input.Length;
        WriteString(span, ref at, request.DedupeKey);
        WriteString(span, ref at, request.ConcurrencyKey);
        WriteString(span, ref at, request.Affinity);
        WriteString(span, ref at, request.CorrelationId);
        if (request.NotBefore is { } notBefore)
        {
            BinaryPrimitives.WriteInt64LittleEndian(span[at..], notBefore.UtcTicks);
            BinaryPrimitives.WriteInt16LittleEndian(span[(at + 8)..], (short)notBefore.Offset.TotalMinutes);
            at += 10;
        }

        if (request.Timeout is { } timeout)
        {
            BinaryPrimitives.WriteInt64LittleEndian(span[at..], timeout.Ticks);
            at += 8;
        }

        if (request.ParentId is { } parent)
        {
            parent.Value.TryWriteBytes(span[at..]);
            at += 16;
        }

        if ((flags & HasLabels) != 0)
        {
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], request.Labels.Count);
            at += 4;
            foreach (var (key, value) in request.Labels)
            {
                WriteString(span, ref at, key);
                WriteString(span, ref at, value);
            }
        }

        Debug.Assert(at == size, "The size computed is the size written.");
        _used += size;
        chunk.Live++;
        return true;
    }

    /// <summary>Builds the request packed at <paramref name="offset"/> again (a new object; the input is copied).</summary>
    public JobRequest Unpack(PackedChunk chunk, int offset, out long createdTicks)
    {
        ReadOnlySpan<byte> span = chunk.Bytes.AsSpan(offset);
        createdTicks = BinaryPrimitives.ReadInt64LittleEndian(span);
        var flags = span[17];
        var inputLength = BinaryPrimitives.ReadInt32LittleEndian(span[18..]);
        var at = 22 + inputLength;
        var dedupeKey = ReadString(span, ref at, flags, HasDedupeKey);
        var concurrencyKey = ReadString(span, ref at, flags, HasConcurrencyKey);
        var affinity = ReadString(span, ref at, flags, HasAffinity);
        var correlationId = ReadString(span, ref at, flags, HasCorrelationId);
        DateTimeOffset? notBefore = null;
        if ((flags & HasNotBefore) != 0)
        {
            var offsetMinutes = BinaryPrimitives.ReadInt16LittleEndian(span[(at + 8)..]);
            notBefore = new DateTimeOffset(BinaryPrimitives.ReadInt64LittleEndian(span[at..]), TimeSpan.Zero).ToOffset(TimeSpan.FromMinutes(offsetMinutes));
            at += 10;
        }

        TimeSpan? timeout = null;
        if ((flags & HasTimeout) != 0)
        {
            timeout = TimeSpan.FromTicks(BinaryPrimitives.ReadInt64LittleEndian(span[at..]));
            at += 8;
        }

        JobId? parentId = null;
        if ((flags & HasParentId) != 0)
        {
            parentId = new JobId(new Guid(span.Slice(at, 16)));
            at += 16;
        }

        var labels = NoLabels;
        if ((flags & HasLabels) != 0)
        {
            var count = BinaryPrimitives.ReadInt32LittleEndian(span[at..]);
            at += 4;
            var read = new Dictionary<string, string>(count, StringComparer.Ordinal);
            for (var i = 0; i < count; i++)
            {
                var key = ReadString(span, ref at);
                read[key] = ReadString(span, ref at);
            }

            labels = read;
        }

        return new JobRequest(Workload(chunk, offset))
        {
            Tenant = Tenant(chunk, offset),
            Priority = span[16],
            Input = inputLength == 0 ? ReadOnlyMemory<byte>.Empty : span.Slice(22, inputLength).ToArray(),
            DedupeKey = dedupeKey,
            ConcurrencyKey = concurrencyKey,
            Affinity = affinity,
            CorrelationId = correlationId,
            NotBefore = notBefore,
            Timeout = timeout,
            ParentId = parentId,
            Labels = labels,
        };
    }

    /// <summary>Gets the workload name of the request packed at <paramref name="offset"/>, without unpacking it.</summary>
    public string Workload(PackedChunk chunk, int offset) => _names[BinaryPrimitives.ReadInt32LittleEndian(chunk.Bytes.AsSpan(offset + 8))];

    /// <summary>Gets the tenant of the request packed at <paramref name="offset"/>, without unpacking it.</summary>
    public string Tenant(PackedChunk chunk, int offset) => _names[BinaryPrimitives.ReadInt32LittleEndian(chunk.Bytes.AsSpan(offset + 12))];

    /// <summary>Whether a job in <paramref name="state"/> whose request is packed at <paramref name="offset"/> matches <paramref name="query"/>.</summary>
    public bool Matches(JobQuery query, JobState state, PackedChunk chunk, int offset)
    {
        if ((query.State is { } wanted && state != wanted)
            || (query.Tenant is not null && !string.Equals(query.Tenant, Tenant(chunk, offset), StringComparison.Ordinal))
            || (query.Workload is not null && !string.Equals(query.Workload, Workload(chunk, offset), StringComparison.Ordinal)))
        {
            return false;
        }

        // Only a label filter needs the whole request.
        return query.Labels is null || query.Matches(state, Unpack(chunk, offset, out _));
    }

    /// <summary>One request packed into <paramref name="chunk"/> is no longer needed (its job left, or was unpacked).</summary>
    public void Release(PackedChunk chunk)
    {
        Debug.Assert(chunk.Live > 0, "Each packed request is released once.");
        if (--chunk.Live > 0)
        {
            return;
        }

        if (chunk == _current)
        {
            _used = 0;
        }
        else
        {
            ChunksInUse--;
            if (_free.Count < MaxFreeChunks)
            {
                _free.Push(chunk);
            }
        }
    }

    private void NewChunk()
    {
        if (_current is { Live: 0 })
        {
            // Nothing in it is kept: write from its start again.
            _used = 0;
            return;
        }

        _current = _free.TryPop(out var free) ? free : new PackedChunk(this);
        _used = 0;
        ChunksInUse++;
    }

    private bool TryName(string name, out int id)
    {
        if (_nameIds.TryGetValue(name, out id))
        {
            return true;
        }

        if (_names.Count == MaxNames)
        {
            return false;
        }

        id = _names.Count;
        _names.Add(name);
        _nameIds.Add(name, id);
        return true;
    }

    private static bool TrySize(JobRequest request, out int size, out byte flags)
    {
        flags = 0;
        size = 0;
        if (request.Input.Length > ChunkSize / 4)
        {
            return false;
        }

        size = 8 + 4 + 4 + 1 + 1 + 4 + request.Input.Length;
        try
        {
            size += Optional(request.DedupeKey, HasDedupeKey, ref flags);
            size += Optional(request.ConcurrencyKey, HasConcurrencyKey, ref flags);
            size += Optional(request.Affinity, HasAffinity, ref flags);
            size += Optional(request.CorrelationId, HasCorrelationId, ref flags);
            if (request.NotBefore is not null)
            {
                flags |= HasNotBefore;
                size += 8 + 2;
            }

            if (request.Timeout is not null)
            {
                flags |= HasTimeout;
                size += 8;
            }

            if (request.ParentId is not null)
            {
                flags |= HasParentId;
                size += 16;
            }

            if (request.Labels.Count > 0)
            {
                flags |= HasLabels;
                size += 4;
                foreach (var (key, value) in request.Labels)
                {
                    size += 8 + Utf8.GetByteCount(key) + Utf8.GetByteCount(value);
                }
            }
        }
        catch (EncoderFallbackException)
        {
            return false;
        }

        return true;
    }

    private static int Optional(string? value, byte flag, ref byte flags)
    {
        if (value is null)
        {
            return 0;
        }

        flags |= flag;
        return 4 + Utf8.GetByteCount(value);
    }

    private static void WriteString(Span<byte> span, ref int at, string? value)
    {
        if (value is null)
        {
            return;
        }

        var length = Utf8.GetBytes(value, span[(at + 4)..]);
        BinaryPrimitives.WriteInt32LittleEndian(span[at..], length);
        at += 4 + length;
    }

    private static string? ReadString(ReadOnlySpan<byte> span, ref int at, byte flags, byte flag)
        => (flags & flag) == 0 ? null : ReadString(span, ref at);

    private static string ReadString(ReadOnlySpan<byte> span, ref int at)
    {
        var length = BinaryPrimitives.ReadInt32LittleEndian(span[at..]);
        var value = Utf8.GetString(span.Slice(at + 4, length));
        at += 4 + length;
        return value;
    }
}

/// <summary>A chunk of <see cref="PackedRequests"/>: its bytes and how many packed requests in it are still kept.</summary>
internal sealed class PackedChunk(PackedRequests owner)
{
    public PackedRequests Owner { get; } = owner;

    public byte[] Bytes { get; } = new byte[PackedRequests.ChunkSize];

    public int Live { get; set; }
}
