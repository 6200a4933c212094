// Compiled by `npm run check-types` (tsc), never run: how a TypeScript app uses the package.
import express from 'express';
import { stickyfarmSession, SessionApiClient, type WriteAck, type SessionSnapshot } from '../src/index';

const app = express();
app.use(stickyfarmSession({ secret: 'example', table: 'express', cookie: { httpOnly: true } }));

async function example(): Promise<void> {
  const api = new SessionApiClient({ socketPath: '/run/stickyfarm/api.sock' });
  const ack: WriteAck = await api.putTable('AAAAAAAAAAAAAAAAAAAAAA', 'cart', { items: [] }, { ifMatch: 0 });
  const whole: SessionSnapshot | null = await api.getSession('AAAAAAAAAAAAAAAAAAAAAA');
  const cart = await api.getTable<{ items: string[] }>('AAAAAAAAAAAAAAAAAAAAAA', 'cart');
  console.log(ack.version, whole?.generation, cart?.value.items.length);
}
void example;
