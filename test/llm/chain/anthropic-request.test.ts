// Anthropic Messages → chat: what an upstream chat API receives.
import t from 'tap';
import { chatRequest } from '../../../src/llm/translate/anthropic_to_chat.ts';

t.test('several text blocks of one turn stay apart (one per line), as the system blocks do', async (t) => {
  const r = chatRequest({
    model: 'm',
    max_tokens: 5,
    system: [{ type: 'text', text: 'Be brief.' }, { type: 'text', text: 'Answer in English.' }],
    messages: [{ role: 'user', content: [{ type: 'text', text: 'Hi' }, { type: 'text', text: 'there' }] }],
  });
  t.same(r.messages, [
    { role: 'system', content: 'Be brief.\nAnswer in English.' },
    { role: 'user', content: 'Hi\nthere' },
  ]);
});
