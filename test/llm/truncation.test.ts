// Responses' truncation "auto": the oldest turns go first, whole (a call with its output), the
// leading system messages and the last turn stay.
import t from 'tap';
import { dropOldestTurn } from '../../src/llm/truncation.ts';

t.test('the oldest turn: from after the leading system messages up to the next user message', async (t) => {
  const input: unknown[] = [
    { role: 'developer', content: 'rules' },
    { role: 'user', content: 'one' },
    { type: 'function_call', call_id: 'c', name: 'f', arguments: '{}' },
    { type: 'function_call_output', call_id: 'c', output: 'x' },
    { role: 'assistant', content: 'answer one' },
    { role: 'user', content: 'two' },
    { role: 'assistant', content: 'answer two' },
    { role: 'user', content: 'three' },
  ];
  const said = () => input.map((i: any) => i.content ?? i.type);
  t.equal(dropOldestTurn(input), true);
  t.same(said(), ['rules', 'two', 'answer two', 'three'], 'the call and its output went with their turn');
  t.equal(dropOldestTurn(input), true);
  t.same(said(), ['rules', 'three']);
  t.equal(dropOldestTurn(input), false, 'the last turn stays');
  t.same(said(), ['rules', 'three']);
});
