using System.Diagnostics;

namespace JobRunner.InMemory;

/// <summary>
/// The in-memory store's jobs in the order they were inserted, for list pages: (sequence, id) slots in an array, appended
/// in increasing sequence order, so that a page finds its continuation point by binary search and reads on from there
/// instead of sorting every job. A removed job's slot is found by binary search and marked (its sequence negated); marked
/// slots at the head are passed over at once, the others are squeezed out when the array is full, before it would grow.
/// No object per job: an insert writes one slot, a removal marks one.
/// </summary>
/// <remarks>Not thread-safe: the store calls it under its lock.</remarks>
[DebuggerDisplay("Live = {Live}, Removed = {_removed}")]
internal sealed class SequenceIndex
{
    private Slot[] _slots = new Slot[256];
    private int _head;
    private int _tail;

    // Marked slots between _head and _tail.
    private int _removed;

    /// <summary>Gets how many jobs the index holds.</summary>
    public int Live => _tail - _head - _removed;

    /// <summary>Gets the end of the slots: a scan runs from <see cref="FirstAfter"/> up to here.</summary>
    public int End => _tail;

    /// <summary>Adds the job inserted with <paramref name="sequence"/>, higher than every sequence added before.</summary>
    /// <param name="sequence">The job's sequence, positive.</param>
    /// <param name="id">The job.</param>
    public void Add(long sequence, JobId id)
    {
        Debug.Assert(sequence > 0 && (_tail == _head || Math.Abs(_slots[_tail - 1].Sequence) < sequence), "Sequences are added in increasing order.");
        if (_tail == _slots.Length)
        {
            MakeRoom();
        }

        _slots[_tail++] = new Slot(sequence, id);
    }

    /// <summary>Removes the job that was added with <paramref name="sequence"/>.</summary>
    /// <param name="sequence">The job's sequence.</param>
    public void Remove(long sequence)
    {
        var at = FirstAfter(sequence - 1);
        if (at == _tail || _slots[at].Sequence != sequence)
        {
            Debug.Fail("Only a job that was added is removed, once.");
            return;
        }

        _slots[at] = new Slot(-sequence, default);
        _removed++;
        while (_head < _tail && _slots[_head].Sequence < 0)
        {
            _head++;
            _removed--;
        }

        if (_head == _tail)
        {
            _head = _tail = 0;
        }
    }

    /// <summary>Gets the place of the first slot whose job came after <paramref name="sequence"/>, or <see cref="End"/>.</summary>
    /// <param name="sequence">The sequence to start after; 0 for the first job.</param>
    /// <returns>The place to scan from.</returns>
    public int FirstAfter(long sequence)
    {
        int low = _head, high = _tail;
        while (low < high)
        {
            var middle = low + ((high - low) >> 1);
            if (Math.Abs(_slots[middle].Sequence) <= sequence)
            {
                low = middle + 1;
            }
            else
            {
                high = middle;
            }
        }

        return low;
    }

    /// <summary>Gets the job at <paramref name="at"/>, or <see langword="false"/> when its slot is marked removed.</summary>
    /// <param name="at">A place from <see cref="FirstAfter"/> up to <see cref="End"/>.</param>
    /// <param name="sequence">The job's sequence.</param>
    /// <param name="id">The job.</param>
    /// <returns>Whether the slot holds a job.</returns>
    public bool TryGet(int at, out long sequence, out JobId id)
    {
        var slot = _slots[at];
        sequence = slot.Sequence;
        id = slot.Id;
        return sequence > 0;
    }

    /// <summary>
    /// Squeezes the marked slots out, into a twice larger array when the jobs would fill more than half of this one: the
    /// array grows as a list would, and a full array that is mostly marked slots is reused.
    /// </summary>
    private void MakeRoom()
    {
        var live = Live;
        var target = live > _slots.Length / 2 ? new Slot[_slots.Length * 2] : _slots;
        var to = 0;
        for (var from = _head; from < _tail; from++)
        {
            if (_slots[from].Sequence > 0)
            {
                target[to++] = _slots[from];
            }
        }

        // The slots hold no references: what stays behind _tail needs no clearing.
        Debug.Assert(to == live, "Every live slot is kept.");
        _slots = target;
        _head = 0;
        _tail = to;
        _removed = 0;
    }

    private readonly record struct Slot(long Sequence, JobId Id);
}
